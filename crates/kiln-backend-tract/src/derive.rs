//! Input dims the graph pins although the file (and config.toml) leave them free.
//!
//! An exported model often declares an input `[batch, features]` with both dims symbolic while
//! the first layer multiplies it by a `[4, 16]` weight: only 4 features can be right. tract types
//! such a `MatMul` with the symbol and would run a request of another width with the wrong
//! reduction length (a wrong answer), and it refuses to load a `Gemm` written that way. Here the
//! free dims are resolved at load time, two ways:
//!
//! 1. tract's own inference with the free dims left unknown rather than symbolic: rules such as
//!    `Gemm`'s (`A.shape[1] == B.shape[0]`) then propagate the weight's dim back to the input;
//! 2. on the typed graph, every contraction (an `EinSum` axis summed over, which is what
//!    `MatMul` and `Gemm` become) whose operands have a free symbol on one side and a number on
//!    the other pins the symbol to the number.
//!
//! The pinned values replace the symbols in the input facts (so tract itself refuses another
//! size) and in the served dims (so the request is refused with 400 before it is queued, and
//! metadata shows them).

use std::collections::HashMap;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::infer::{GenericFactoid, ShapeFactoid};

/// How many rounds of the typed-graph pass run (each may pin symbols the next one uses).
const ROUNDS: usize = 4;

/// Resolves the free dims of `model`'s inputs (bare symbols other than `batch`), sets the
/// pinned values in its input facts and returns, per input, the dims that were pinned as
/// `(axis, value)`. Errors only when the graph contracts two different fixed sizes, which no
/// request can satisfy.
pub fn pin_graph_dims(
    model: &mut InferenceModel,
    batch: &Symbol,
) -> TractResult<Vec<Vec<(usize, i64)>>> {
    let free = free_symbols(model, batch)?;
    if free.is_empty() {
        return Ok(vec![Vec::new(); model.inputs.len()]);
    }
    let mut pins = infer_unknown(model, &free)?;
    apply(model, &pins)?;
    for _ in 0..ROUNDS {
        let Ok(typed) = model.clone().into_typed() else {
            break;
        };
        let found = contractions(&typed, &free)?;
        let new: HashMap<Symbol, i64> = found
            .into_iter()
            .filter(|(s, _)| !pins.contains_key(s))
            .collect();
        if new.is_empty() {
            break;
        }
        apply(model, &new)?;
        pins.extend(new);
    }
    let mut pinned = Vec::with_capacity(model.inputs.len());
    for i in 0..model.inputs.len() {
        let fact = model.input_fact(i)?;
        let mut mine = Vec::new();
        for (axis, d) in fact.shape.dims().enumerate() {
            if let GenericFactoid::Only(TDim::Val(v)) = d {
                if was_free(&free, i, axis) {
                    mine.push((axis, *v));
                }
            }
        }
        pinned.push(mine);
    }
    Ok(pinned)
}

/// Every free dim: input, axis and its symbol.
type Free = Vec<(usize, usize, Symbol)>;

fn was_free(free: &Free, input: usize, axis: usize) -> bool {
    free.iter().any(|(i, a, _)| *i == input && *a == axis)
}

fn free_symbols(model: &InferenceModel, batch: &Symbol) -> TractResult<Free> {
    let mut free = Vec::new();
    for i in 0..model.inputs.len() {
        for (axis, d) in model.input_fact(i)?.shape.dims().enumerate() {
            if let GenericFactoid::Only(TDim::Sym(s)) = d {
                if s != batch {
                    free.push((i, axis, s.clone()));
                }
            }
        }
    }
    Ok(free)
}

/// Pass 1: tract's inference with the free dims unknown. Failures only mean nothing is learnt.
fn infer_unknown(model: &InferenceModel, free: &Free) -> TractResult<HashMap<Symbol, i64>> {
    let mut probe = model.clone();
    for i in 0..probe.inputs.len() {
        let fact = probe.input_fact(i)?.clone();
        let dims: TVec<GenericFactoid<TDim>> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(axis, d)| {
                if was_free(free, i, axis) {
                    GenericFactoid::Any
                } else {
                    d.clone()
                }
            })
            .collect();
        probe.set_input_fact(
            i,
            InferenceFact {
                shape: ShapeFactoid::closed(dims),
                ..fact
            },
        )?;
    }
    if let Err(e) = probe.analyse(true) {
        tracing::debug!(error = %format!("{e:#}"), "inference with unknown input dims stopped");
    }
    let mut pins = HashMap::new();
    for (i, axis, sym) in free {
        if let Some(GenericFactoid::Only(TDim::Val(v))) =
            probe.input_fact(*i)?.shape.dims().nth(*axis)
        {
            pins.insert(sym.clone(), *v);
        }
    }
    Ok(pins)
}

/// Pass 2: contracted axes of the typed graph's `EinSum`s that pair a free symbol with a number.
fn contractions(typed: &TypedModel, free: &Free) -> TractResult<HashMap<Symbol, i64>> {
    let mut pins = HashMap::new();
    for node in typed.nodes() {
        let Some(op) = node.op_as::<EinSum>() else {
            continue;
        };
        let facts: Vec<&TypedFact> = node
            .inputs
            .iter()
            .map(|o| typed.outlet_fact(*o))
            .collect::<TractResult<_>>()?;
        for axis in op.axes.iter_all_axes() {
            let contracted = axis.outputs.iter().all(|o| o.is_empty())
                && axis.inputs.iter().filter(|i| !i.is_empty()).count() >= 2;
            if !contracted {
                continue;
            }
            let mut values: Vec<i64> = Vec::new();
            let mut symbols: Vec<Symbol> = Vec::new();
            for (k, positions) in axis.inputs.iter().enumerate() {
                let Some(fact) = facts.get(k) else { continue };
                for &p in positions {
                    match fact.shape.get(p) {
                        Some(TDim::Val(v)) => values.push(*v),
                        Some(TDim::Sym(s)) if free.iter().any(|(_, _, f)| f == s) => {
                            symbols.push(s.clone())
                        }
                        _ => {}
                    }
                }
            }
            // a 1 may broadcast; only larger sizes fix the dim
            values.retain(|&v| v != 1);
            values.sort_unstable();
            values.dedup();
            if values.len() > 1 {
                return Err(TractError::msg(format!(
                    "node '{}' multiplies a dimension of {} by one of {}; the input dims do not fit the weights",
                    node.name, values[0], values[1]
                )));
            }
            if let Some(&v) = values.first() {
                for s in symbols {
                    pins.insert(s, v);
                }
            }
        }
    }
    Ok(pins)
}

/// Replaces the pinned symbols in the input facts.
fn apply(model: &mut InferenceModel, pins: &HashMap<Symbol, i64>) -> TractResult<()> {
    if pins.is_empty() {
        return Ok(());
    }
    for i in 0..model.inputs.len() {
        let fact = model.input_fact(i)?.clone();
        let dims: TVec<GenericFactoid<TDim>> = fact
            .shape
            .dims()
            .map(|d| match d {
                GenericFactoid::Only(TDim::Sym(s)) if pins.contains_key(s) => {
                    GenericFactoid::Only(TDim::Val(pins[s]))
                }
                other => other.clone(),
            })
            .collect();
        model.set_input_fact(
            i,
            InferenceFact {
                shape: ShapeFactoid::closed(dims),
                ..fact
            },
        )?;
    }
    Ok(())
}
