//! Input dims the graph pins although the file leaves them symbolic.
//!
//! ONNX Runtime's session metadata repeats the file's declared input shapes: an input declared
//! `[batch, features]` reads as `[-1, -1]` even when its first consumer multiplies it by a
//! `[4, 16]` weight, so that only 4 features can ever be right. ONNX Runtime refuses another
//! width at run time, but the server should refuse it before queueing (400 naming both shapes)
//! and show the real dims in metadata. This reads the few facts it needs from the model file
//! ([`crate::graph`]: nodes, initializer dims, graph inputs) and pins
//! the contracted dim of every input that feeds a `MatMul` or `Gemm` whose other operand is a
//! constant, directly or through shape-preserving unary nodes.

use crate::graph::{GraphProto, NodeProto};
use std::collections::HashMap;

/// Unary operators that keep their input's shape, which may stand between an input and the
/// multiplication.
const SHAPE_PRESERVING: &[&str] = &[
    "Identity",
    "Cast",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Dropout",
    "Softplus",
    "Elu",
    "Selu",
    "HardSigmoid",
    "Clip",
];

/// For each graph input the graph pins, `(axis, size)` pairs in the file's full dims (batch
/// included). `ranks` gives each input's rank (from the session). Any failure to read the
/// file yields no pins: the session has already loaded it, and ONNX Runtime still checks
/// shapes at run time.
pub fn pinned_dims(
    graph: Option<&GraphProto>,
    ranks: &HashMap<String, usize>,
) -> HashMap<String, Vec<(usize, i64)>> {
    graph.map(|g| pins_of(g, ranks)).unwrap_or_default()
}

fn pins_of(
    graph: &GraphProto,
    ranks: &HashMap<String, usize>,
) -> HashMap<String, Vec<(usize, i64)>> {
    let mut consts: HashMap<&str, &[i64]> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice()))
        .collect();
    for n in &graph.node {
        if n.op_type == "Constant" && is_default_domain(n) {
            let value = n.attribute.iter().find(|a| a.name == "value");
            if let (Some(t), Some(out)) = (value.and_then(|a| a.t.as_ref()), n.output.first()) {
                consts.insert(out.as_str(), t.dims.as_slice());
            }
        }
    }
    // tensor name -> the graph input it equals in shape
    let mut source: HashMap<&str, &str> = graph
        .input
        .iter()
        .filter(|v| !consts.contains_key(v.name.as_str()))
        .map(|v| (v.name.as_str(), v.name.as_str()))
        .collect();
    for _ in 0..4 {
        for n in &graph.node {
            if !is_default_domain(n) || !SHAPE_PRESERVING.contains(&n.op_type.as_str()) {
                continue;
            }
            let from = n
                .input
                .first()
                .and_then(|i| source.get(i.as_str()).copied());
            if let (Some(input), Some(out)) = (from, n.output.first()) {
                source.insert(out.as_str(), input);
            }
        }
    }
    let mut pins: HashMap<String, Vec<(usize, i64)>> = HashMap::new();
    let mut pin = |input: &str, axis: usize, size: i64| {
        let list = pins.entry(input.to_string()).or_default();
        if size > 0 && !list.iter().any(|&(a, _)| a == axis) {
            list.push((axis, size));
        }
    };
    for n in &graph.node {
        if !is_default_domain(n) || n.input.len() < 2 {
            continue;
        }
        let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
        let attr = |name: &str| {
            n.attribute
                .iter()
                .find(|x| x.name == name)
                .map_or(0, |x| x.i)
        };
        match n.op_type.as_str() {
            "MatMul" => {
                // A [..., m, k] x B [..., k, n]: a 1-D operand is the vector k
                if let (Some(&input), Some(w)) = (source.get(a), consts.get(b)) {
                    let rank = ranks.get(input).copied().unwrap_or(0);
                    let k = if w.len() >= 2 {
                        w.get(w.len() - 2)
                    } else {
                        w.first()
                    };
                    if let (Some(&k), true) = (k, rank >= 1) {
                        pin(input, rank - 1, k);
                    }
                }
                if let (Some(w), Some(&input)) = (consts.get(a), source.get(b)) {
                    let rank = ranks.get(input).copied().unwrap_or(0);
                    let axis = if rank >= 2 {
                        Some(rank - 2)
                    } else {
                        rank.checked_sub(1)
                    };
                    if let (Some(&k), Some(axis)) = (w.last(), axis) {
                        pin(input, axis, k);
                    }
                }
            }
            "Gemm" => {
                // A [m, k] (transA: [k, m]) x B [k, n] (transB: [n, k])
                let (ta, tb) = (attr("transA") != 0, attr("transB") != 0);
                if let (Some(&input), Some(w)) = (source.get(a), consts.get(b)) {
                    if let (Some(&k), 2) = (
                        w.get(usize::from(tb)),
                        ranks.get(input).copied().unwrap_or(0),
                    ) {
                        pin(input, usize::from(!ta), k);
                    }
                }
                if let (Some(w), Some(&input)) = (consts.get(a), source.get(b)) {
                    if let (Some(&k), 2) = (
                        w.get(usize::from(!ta)),
                        ranks.get(input).copied().unwrap_or(0),
                    ) {
                        pin(input, usize::from(tb), k);
                    }
                }
            }
            _ => {}
        }
    }
    pins.retain(|_, v| !v.is_empty());
    pins
}

fn is_default_domain(n: &NodeProto) -> bool {
    n.domain.is_empty() || n.domain == "ai.onnx"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{AttributeProto, ModelProto, TensorProto, ValueInfoProto};
    use prost::Message;

    fn node(op: &str, inputs: &[&str], output: &str, attrs: &[(&str, i64)]) -> NodeProto {
        NodeProto {
            name: String::new(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            op_type: op.to_string(),
            attribute: attrs
                .iter()
                .map(|(n, i)| AttributeProto {
                    name: n.to_string(),
                    i: *i,
                    t: None,
                })
                .collect(),
            domain: String::new(),
        }
    }

    fn tensor(name: &str, dims: &[i64]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            name: name.to_string(),
        }
    }

    #[test]
    fn matmul_and_gemm_pin_the_contracted_dim() {
        let graph = GraphProto {
            node: vec![
                node("Relu", &["x"], "xr", &[]),
                node("MatMul", &["xr", "W"], "y", &[]),
                node("Gemm", &["z", "Wt"], "w", &[("transB", 1)]),
                node("MatMul", &["M", "v"], "u", &[]),
                node("MatMul", &["q", "q"], "qq", &[]),
            ],
            initializer: vec![
                tensor("W", &[4, 3]),
                tensor("Wt", &[2, 5]),
                tensor("M", &[6, 7]),
            ],
            input: ["x", "z", "v", "q", "W"]
                .iter()
                .map(|n| ValueInfoProto {
                    name: n.to_string(),
                })
                .collect(),
        };
        let ranks: HashMap<String, usize> = [("x", 2), ("z", 2), ("v", 3), ("q", 2)]
            .iter()
            .map(|(n, r)| (n.to_string(), *r))
            .collect();
        let bytes = ModelProto { graph: Some(graph) }.encode_to_vec();
        let dir = std::env::temp_dir().join(format!("kiln-onnx-derive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.onnx");
        std::fs::write(&path, bytes).unwrap();
        let graph = crate::graph::read_graph(&path).expect("the graph written above");
        let pins = pinned_dims(Some(&graph), &ranks);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pins["x"], vec![(1, 4)]);
        assert_eq!(pins["z"], vec![(1, 5)]);
        assert_eq!(pins["v"], vec![(1, 7)]);
        assert!(
            !pins.contains_key("q") && !pins.contains_key("W"),
            "{pins:?}"
        );
        assert!(crate::graph::read_graph(std::path::Path::new("/nonexistent/model.onnx")).is_err());
        assert!(pinned_dims(None, &ranks).is_empty());
    }
}
