//! Index ranges of inputs that feed an ONNX `Gather` directly.
//!
//! A model that looks ids up in an embedding table with a raw `Gather` computes garbage, fails
//! or (in some engines) panics when a client sends an id outside the table. Backends find such
//! inputs once at load time ([`GraphSketch::index_bounds`], from the few facts of the ONNX graph
//! it needs) and check every request against them before compute ([`check_index_bounds`]), so
//! the client gets a 400 naming the input, the value and the allowed range.

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// The facts of one ONNX node the analysis needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SketchNode {
    /// The node's name (may be empty).
    pub name: String,
    /// The operator (`Gather`, `Cast`, `Identity`, `Constant`, ...), default domain only.
    pub op_type: String,
    /// Input tensor names, in order.
    pub inputs: Vec<String>,
    /// Output tensor names, in order.
    pub outputs: Vec<String>,
    /// The `axis` attribute, when present.
    pub axis: Option<i64>,
    /// For `Constant`: the dims of its `value` tensor.
    pub value_dims: Option<Vec<i64>>,
}

/// The facts of an ONNX graph the analysis needs: what is an input, what is a constant of which
/// shape, and the nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphSketch {
    /// Graph input names (initializers listed as inputs are left out by the analysis).
    pub inputs: Vec<String>,
    /// Initializer name to dims.
    pub initializers: HashMap<String, Vec<i64>>,
    /// Nodes of the main graph, any order.
    pub nodes: Vec<SketchNode>,
}

/// An input whose values index a table: each value must lie in `-size..size` (ONNX `Gather`
/// takes negative indices from the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBound {
    /// The model input.
    pub input: String,
    /// Size of the gathered axis; the smallest one if the input feeds several gathers.
    pub size: u64,
    /// The tensor gathered from, for messages.
    pub table: String,
}

/// How many `Cast` / `Identity` nodes may stand between an input and the gather.
const MAX_HOPS: usize = 4;

impl GraphSketch {
    /// The inputs that feed a `Gather`'s indices directly (or through `Cast` / `Identity`)
    /// over a constant table (an initializer or `Constant`, possibly through `Identity`).
    pub fn index_bounds(&self) -> Vec<IndexBound> {
        let producer: HashMap<&str, &SketchNode> = self
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
            .collect();
        let inputs: Vec<&str> = self
            .inputs
            .iter()
            .map(String::as_str)
            .filter(|i| !self.initializers.contains_key(*i))
            .collect();
        let mut out: Vec<IndexBound> = Vec::new();
        for node in self.nodes.iter().filter(|n| n.op_type == "Gather") {
            let (Some(data), Some(indices)) = (node.inputs.first(), node.inputs.get(1)) else {
                continue;
            };
            let Some(input) = source_input(indices, &inputs, &producer) else {
                continue;
            };
            let Some(dims) = constant_dims(data, &self.initializers, &producer) else {
                continue;
            };
            let rank = dims.len() as i64;
            let axis = node.axis.unwrap_or(0);
            let axis = if axis < 0 { axis + rank } else { axis };
            let Some(&size) = usize::try_from(axis).ok().and_then(|a| dims.get(a)) else {
                continue;
            };
            let Ok(size) = u64::try_from(size) else {
                continue;
            };
            match out.iter_mut().find(|b| b.input == input) {
                Some(b) if b.size <= size => {}
                Some(b) => {
                    b.size = size;
                    b.table = data.clone();
                }
                None => out.push(IndexBound {
                    input: input.to_string(),
                    size,
                    table: data.clone(),
                }),
            }
        }
        out
    }
}

/// The graph input `name` comes from, through at most [`MAX_HOPS`] `Cast` / `Identity` nodes.
fn source_input<'a>(
    name: &'a str,
    inputs: &[&'a str],
    producer: &HashMap<&str, &'a SketchNode>,
) -> Option<&'a str> {
    let mut name = name;
    for _ in 0..=MAX_HOPS {
        if inputs.contains(&name) {
            return Some(name);
        }
        let node = producer.get(name)?;
        if !matches!(node.op_type.as_str(), "Cast" | "Identity") {
            return None;
        }
        name = node.inputs.first()?.as_str();
    }
    None
}

/// The dims of the constant `name` is (an initializer or `Constant`, through `Identity`).
fn constant_dims<'a>(
    name: &'a str,
    initializers: &'a HashMap<String, Vec<i64>>,
    producer: &HashMap<&str, &'a SketchNode>,
) -> Option<&'a [i64]> {
    let mut name = name;
    for _ in 0..=MAX_HOPS {
        if let Some(d) = initializers.get(name) {
            return Some(d);
        }
        let node = producer.get(name)?;
        match node.op_type.as_str() {
            "Constant" => return node.value_dims.as_deref(),
            "Identity" => name = node.inputs.first()?.as_str(),
            _ => return None,
        }
    }
    None
}

/// Checks every integer input named in `bounds` against its range; the error names the input,
/// the first bad value, its position and the allowed range. Inputs of other types are skipped.
pub fn check_index_bounds(bounds: &[IndexBound], inputs: &[Tensor]) -> Result<()> {
    for b in bounds {
        let Some(t) = inputs.iter().find(|t| t.name == b.input) else {
            continue;
        };
        if let Some((at, value)) = first_out_of_range(t, b.size) {
            let size = b.size as i128;
            return Err(Error::invalid(format!(
                "input '{}': value {value} at element {at} is outside the allowed range {}..={} \
                 (it indexes '{}', which has {size} entries along the gathered axis)",
                t.name,
                -size,
                size - 1,
                b.table
            )));
        }
    }
    Ok(())
}

/// The first element of `t` outside `-size..size`, with its position.
fn first_out_of_range(t: &Tensor, size: u64) -> Option<(usize, i128)> {
    let size = size as i128;
    let bad = |v: i128| v < -size || v >= size;
    macro_rules! scan {
        ($ty:ty) => {{
            const W: usize = std::mem::size_of::<$ty>();
            t.data.chunks_exact(W).enumerate().find_map(|(i, c)| {
                let mut b = [0u8; W];
                b.copy_from_slice(c);
                let v = <$ty>::from_le_bytes(b) as i128;
                bad(v).then_some((i, v))
            })
        }};
    }
    match t.dtype {
        DataType::Int8 => scan!(i8),
        DataType::Int16 => scan!(i16),
        DataType::Int32 => scan!(i32),
        DataType::Int64 => scan!(i64),
        DataType::Uint8 => scan!(u8),
        DataType::Uint16 => scan!(u16),
        DataType::Uint32 => scan!(u32),
        DataType::Uint64 => scan!(u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str], axis: Option<i64>) -> SketchNode {
        SketchNode {
            name: String::new(),
            op_type: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            axis,
            value_dims: None,
        }
    }

    fn sketch(nodes: Vec<SketchNode>) -> GraphSketch {
        GraphSketch {
            inputs: vec!["ids".into(), "other".into()],
            initializers: [
                ("emb".to_string(), vec![10, 4]),
                ("small".into(), vec![3, 6]),
            ]
            .into_iter()
            .collect(),
            nodes,
        }
    }

    #[test]
    fn finds_direct_cast_and_axis_gathers_and_keeps_the_smallest() {
        let g = sketch(vec![node("Gather", &["emb", "ids"], &["e"], None)]);
        let b = g.index_bounds();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].input.as_str(), b[0].size), ("ids", 10));

        let g = sketch(vec![
            node("Cast", &["ids"], &["ids32"], None),
            node("Gather", &["emb", "ids32"], &["e"], None),
            node("Gather", &["small", "ids"], &["s"], Some(-1)),
        ]);
        let b = g.index_bounds();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].size, b[0].table.as_str()), (6, "small"));
    }

    #[test]
    fn ignores_computed_indices_and_computed_tables() {
        let g = sketch(vec![
            node("Mod", &["ids", "k"], &["m"], None),
            node("Gather", &["emb", "m"], &["e"], None),
            node("Relu", &["emb"], &["r"], None),
            node("Gather", &["r", "other"], &["f"], None),
        ]);
        assert!(g.index_bounds().is_empty());
    }

    #[test]
    fn check_names_input_value_and_range() {
        let b = vec![IndexBound {
            input: "ids".into(),
            size: 10,
            table: "emb".into(),
        }];
        let ok = Tensor::from_vec("ids", vec![4], &[0i64, 9, -10, -1]);
        assert!(check_index_bounds(&b, &[ok]).is_ok());
        for (bad, at) in [(10i64, 1), (-11, 1)] {
            let t = Tensor::from_vec("ids", vec![3], &[0i64, bad, 3]);
            let e = check_index_bounds(&b, &[t]).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
            assert!(
                e.message.contains("input 'ids'")
                    && e.message.contains(&format!("value {bad} at element {at}"))
                    && e.message.contains("-10..=9"),
                "{}",
                e.message
            );
        }
        let t = Tensor::from_vec("ids", vec![1], &[u32::MAX]);
        assert!(check_index_bounds(&b, &[t]).is_err());
    }
}
