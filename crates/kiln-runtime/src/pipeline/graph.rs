//! The load-time check of a pipeline's graph, and the plan the executor follows.
//!
//! Refused, each naming the step: a model that does not serve, a tensor no step produces and
//! no input provides, a tensor produced twice (except by alternative branches of one
//! `switch`), a cycle, and dtypes or shapes that disagree between a producer and a consumer.
//! Shapes are checked where known at load time (`-1` is a dimension known only at run time).

use super::ops;
use super::retrieve::ItemIndex;
use super::spec::{Step, StepKind};
use crate::repository::ModelRepository;
use kiln_core::{DataType, Error, ModelConfig, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Dtype and shape of a tensor as far as known at load time.
#[derive(Debug, Clone, PartialEq)]
struct Meta {
    dtype: DataType,
    shape: Vec<i64>,
}

/// What the executor needs beyond the steps.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per step: the steps whose outputs (or choice, for a guarding switch) it waits for.
    pub deps: Vec<Vec<usize>>,
    /// Per step: the switch that guards it, if one lists it.
    pub guard: Vec<Option<usize>>,
    /// Per tensor: the steps producing it (empty: a pipeline input).
    pub producers: HashMap<String, Vec<usize>>,
}

fn compatible(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == -1 || y == -1 || x == y)
}

/// Checks the graph of pipeline `name` and returns its plan.
pub fn check(
    name: &str,
    config: &ModelConfig,
    steps: &[Step],
    items: &BTreeMap<usize, Arc<ItemIndex>>,
    repo: &ModelRepository,
) -> Result<Plan> {
    let at = |s: &Step, m: String| Error::invalid(format!("step '{}': {m}", s.name));
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();

    // guards: the steps each switch lists
    let mut guard: Vec<Option<usize>> = vec![None; steps.len()];
    let mut branches: Vec<Vec<BTreeSet<usize>>> = vec![Vec::new(); steps.len()];
    for (w, s) in steps.iter().enumerate() {
        let StepKind::Switch { cases, default, .. } = &s.kind else {
            continue;
        };
        for (label, list) in cases
            .iter()
            .map(|(k, v)| (format!("cases.{k}"), v))
            .chain(default.iter().map(|d| ("default".to_string(), d)))
        {
            let mut branch = BTreeSet::new();
            for target in list {
                let &t = index
                    .get(target.as_str())
                    .ok_or_else(|| at(s, format!("{label}: no step is named '{target}'")))?;
                if t == w {
                    return Err(at(s, format!("{label}: a switch cannot choose itself")));
                }
                match guard[t] {
                    Some(other) if other != w => {
                        return Err(at(
                            &steps[t],
                            format!(
                                "is chosen by two switches ('{}' and '{}')",
                                steps[other].name, s.name
                            ),
                        ))
                    }
                    _ => guard[t] = Some(w),
                }
                branch.insert(t);
            }
            branches[w].push(branch);
        }
    }
    // two steps may produce one tensor only as alternatives: no branch of their switch has both
    let alternatives = |a: usize, b: usize| match (guard[a], guard[b]) {
        (Some(x), Some(y)) if x == y => !branches[x]
            .iter()
            .any(|br| br.contains(&a) && br.contains(&b)),
        _ => false,
    };

    let mut producers: HashMap<String, Vec<usize>> = HashMap::new();
    for spec in &config.input {
        producers.insert(spec.name.clone(), Vec::new());
    }
    for (i, s) in steps.iter().enumerate() {
        for tensor in s.output_map.values() {
            match producers.get_mut(tensor) {
                Some(p) if p.is_empty() => {
                    return Err(at(
                        s,
                        format!("produces '{tensor}', which is an input of the pipeline"),
                    ))
                }
                Some(p) => {
                    if let Some(&other) = p.iter().find(|&&o| !alternatives(o, i)) {
                        return Err(at(
                            s,
                            format!(
                                "produces '{tensor}', which step '{}' produces too",
                                steps[other].name
                            ),
                        ));
                    }
                    p.push(i);
                }
                None => {
                    producers.insert(tensor.clone(), vec![i]);
                }
            }
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let mut d = BTreeSet::new();
        for tensor in s.input_map.values() {
            let p = producers.get(tensor).ok_or_else(|| {
                at(
                    s,
                    format!("reads '{tensor}', which no step produces and no input provides"),
                )
            })?;
            d.extend(p.iter().copied());
        }
        d.extend(guard[i]);
        deps.push(d.into_iter().collect());
    }
    for o in &config.output {
        let produced = producers.get(&o.name).is_some_and(|p| !p.is_empty());
        let passed_through = config.input.iter().any(|i| i.name == o.name);
        if !(produced || passed_through) {
            return Err(Error::invalid(format!(
                "output '{}': no step produces it",
                o.name
            )));
        }
    }
    let order = topological(steps, &deps)?;
    for s in steps {
        if let StepKind::Model { model, .. } = &s.kind {
            if let Some(path) = reaches(repo, model, name, &mut Vec::new()) {
                return Err(at(
                    s,
                    format!(
                        "model '{model}' runs this pipeline again ({}): pipelines cannot \
                         call themselves",
                        path.join(" -> ")
                    ),
                ));
            }
        }
    }

    // dtypes and shapes, in dependency order
    let mut metas: HashMap<String, Meta> = config
        .input
        .iter()
        .map(|s| {
            let m = Meta {
                dtype: s.data_type,
                shape: s.dims.clone(),
            };
            (s.name.clone(), m)
        })
        .collect();
    for &i in &order {
        let s = &steps[i];
        let input =
            |port: &str| -> Option<&Meta> { s.input_map.get(port).and_then(|t| metas.get(t)) };
        let produced: Vec<(String, Meta)> =
            infer(s, &input, items.get(&i), repo).map_err(|m| at(s, m))?;
        for (port, meta) in produced {
            let Some(tensor) = s.output_map.get(&port) else {
                continue;
            };
            if let Some(prev) = metas.get(tensor) {
                // an alternative branch's version of the same tensor must agree
                if prev.dtype != meta.dtype || !compatible(&prev.shape, &meta.shape) {
                    return Err(at(
                        s,
                        format!(
                            "'{tensor}' is {} {:?} here but {} {:?} from another branch",
                            meta.dtype, meta.shape, prev.dtype, prev.shape
                        ),
                    ));
                }
            }
            metas.insert(tensor.clone(), meta);
        }
    }
    for o in &config.output {
        let Some(m) = metas.get(&o.name) else {
            continue;
        };
        if m.dtype != o.data_type || !compatible(&m.shape, &o.dims) {
            return Err(Error::invalid(format!(
                "output '{}': declared {} {:?} but its step produces {} {:?}",
                o.name, o.data_type, o.dims, m.dtype, m.shape
            )));
        }
    }
    Ok(Plan {
        deps,
        guard,
        producers,
    })
}

/// The chain of pipelines from `model` that leads back to `target`, if one does.
fn reaches(
    repo: &ModelRepository,
    model: &str,
    target: &str,
    seen: &mut Vec<String>,
) -> Option<Vec<String>> {
    if model == target {
        return Some(vec![model.to_string()]);
    }
    if seen.iter().any(|s| s == model) {
        return None;
    }
    seen.push(model.to_string());
    let member = repo.get(model, None).ok()?;
    let p = member.pipeline_body()?;
    p.steps().iter().find_map(|s| match &s.kind {
        StepKind::Model { model: m, .. } => reaches(repo, m, target, seen).map(|mut path| {
            path.insert(0, model.to_string());
            path
        }),
        _ => None,
    })
}

/// Kahn's order of the steps, or an error naming the steps on a cycle.
fn topological(steps: &[Step], deps: &[Vec<usize>]) -> Result<Vec<usize>> {
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            users[p].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push(u);
            }
        }
    }
    if order.len() < steps.len() {
        let cycle: Vec<&str> = (0..steps.len())
            .filter(|&i| indegree[i] > 0)
            .map(|i| steps[i].name.as_str())
            .collect();
        return Err(Error::invalid(format!(
            "steps {cycle:?} form a cycle: each waits for another's output"
        )));
    }
    Ok(order)
}

fn dims_of(m: &Meta) -> &[i64] {
    &m.shape
}

/// The outputs (port, meta) of step `s` given its inputs' metas.
fn infer<'a>(
    s: &Step,
    input: &dyn Fn(&str) -> Option<&'a Meta>,
    items: Option<&Arc<ItemIndex>>,
    repo: &ModelRepository,
) -> std::result::Result<Vec<(String, Meta)>, String> {
    let need = |port: &str| input(port).ok_or_else(|| format!("input '{port}' is not known"));
    let float = |port: &str, m: &Meta| {
        if matches!(m.dtype, DataType::Fp32) {
            Ok(())
        } else {
            Err(format!("{port}: {} given, FP32 expected", m.dtype))
        }
    };
    let msg = |e: Error| e.message;
    let meta = |dtype, shape| Meta { dtype, shape };
    Ok(match &s.kind {
        StepKind::Model { model, version } => return model_step(s, model, *version, input, repo),
        StepKind::Retrieve { k, .. } => {
            let q = need("query")?;
            float("query", q)?;
            let index = items.ok_or("the item table is not loaded")?;
            if q.shape.len() != 2 || !(q.shape[1] == -1 || q.shape[1] as usize == index.dim()) {
                return Err(format!(
                    "query: shape {:?} given, [B, {}] expected (the item table's dim)",
                    q.shape,
                    index.dim()
                ));
            }
            let k = (*k).min(index.len()) as i64;
            let b = q.shape[0];
            vec![
                ("ids".into(), meta(DataType::Int64, vec![b, k])),
                ("scores".into(), meta(DataType::Fp32, vec![b, k])),
                (
                    "embeddings".into(),
                    meta(DataType::Fp32, vec![b, k, index.dim() as i64]),
                ),
            ]
        }
        StepKind::TopK { k } => {
            let x = need("input")?;
            float("input", x)?;
            let shape = ops::topk_shape(dims_of(x), *k).map_err(msg)?;
            vec![
                ("indices".into(), meta(DataType::Int64, shape.clone())),
                ("values".into(), meta(x.dtype, shape)),
            ]
        }
        StepKind::Gather { axis } => {
            let (d, i) = (need("data")?, need("indices")?);
            if !matches!(i.dtype, DataType::Int64 | DataType::Int32) {
                return Err(format!(
                    "indices: {} given, INT64 or INT32 expected",
                    i.dtype
                ));
            }
            let shape = ops::gather_shape(&d.shape, &i.shape, *axis).map_err(msg)?;
            vec![("output".into(), meta(d.dtype, shape))]
        }
        StepKind::Repeat { times } => {
            let x = need("input")?;
            let n = match (input("like"), times) {
                (Some(like), _) => like.shape.first().copied().unwrap_or(-1),
                (None, Some(t)) => *t as i64,
                (None, None) => -1,
            };
            let shape = ops::repeat_shape(&x.shape, n).map_err(msg)?;
            vec![("output".into(), meta(x.dtype, shape))]
        }
        StepKind::Concat { axis } => {
            let parts: Vec<&Meta> = (0..s.input_map.len())
                .map(|i| need(&format!("input_{i}")))
                .collect::<std::result::Result<_, _>>()?;
            if let Some((i, p)) = parts
                .iter()
                .enumerate()
                .find(|(_, p)| p.dtype != parts[0].dtype)
            {
                return Err(format!(
                    "input_{i}: {} given, but input_0 is {}",
                    p.dtype, parts[0].dtype
                ));
            }
            let shapes: Vec<&[i64]> = parts.iter().map(|p| p.shape.as_slice()).collect();
            let shape = ops::concat_shape(&shapes, *axis).map_err(msg)?;
            vec![("output".into(), meta(parts[0].dtype, shape))]
        }
        StepKind::Slice { axis, start, end } => {
            let x = need("input")?;
            let shape = ops::slice_shape(&x.shape, *axis, *start, *end).map_err(msg)?;
            vec![("output".into(), meta(x.dtype, shape))]
        }
        StepKind::Reshape { shape } => {
            let x = need("input")?;
            let out = ops::reshape_shape(&x.shape, shape).map_err(msg)?;
            vec![("output".into(), meta(x.dtype, out))]
        }
        StepKind::Switch { .. } => Vec::new(),
    })
}

/// Checks a model step against the member's inputs and outputs and returns its outputs.
fn model_step<'a>(
    s: &Step,
    model: &str,
    version: Option<u64>,
    input: &dyn Fn(&str) -> Option<&'a Meta>,
    repo: &ModelRepository,
) -> std::result::Result<Vec<(String, Meta)>, String> {
    let member = repo.get(model, version).map_err(|e| e.message)?;
    let io = member.io();
    let max_batch = member.config.max_batch_size as i64;
    let batched = max_batch > 0;
    let names =
        |specs: &[kiln_core::TensorSpec]| specs.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    let mut rows = -1;
    for (port, tensor) in &s.input_map {
        let spec = io.inputs.iter().find(|x| &x.name == port).ok_or_else(|| {
            format!(
                "input_map: '{port}' is not an input of model '{model}' (inputs: {:?})",
                names(&io.inputs)
            )
        })?;
        let Some(m) = input(port) else {
            continue;
        };
        if m.dtype != spec.data_type {
            return Err(format!(
                "input '{port}' of model '{model}' is {} but '{tensor}' is {}",
                spec.data_type, m.dtype
            ));
        }
        let want = spec.client_shape(batched);
        let ok = if batched && spec.allow_ragged_batch {
            m.shape.len() == 1
        } else {
            compatible(&m.shape, &want)
        };
        if !ok {
            return Err(format!(
                "input '{port}' of model '{model}' takes shape {want:?} but '{tensor}' is {:?}",
                m.shape
            ));
        }
        if batched && !spec.allow_ragged_batch {
            let r = m.shape[0];
            if r > max_batch {
                return Err(format!(
                    "'{tensor}' has {r} rows but model '{model}' takes at most {max_batch} \
                     (max_batch_size)"
                ));
            }
            rows = rows.max(r);
        }
    }
    if let Some(missing) = io
        .inputs
        .iter()
        .find(|x| !s.input_map.contains_key(&x.name))
    {
        return Err(format!(
            "input '{}' of model '{model}' is not in input_map",
            missing.name
        ));
    }
    let mut out = Vec::new();
    for port in s.output_map.keys() {
        let spec = io.outputs.iter().find(|x| &x.name == port).ok_or_else(|| {
            format!(
                "output_map: '{port}' is not an output of model '{model}' (outputs: {:?})",
                names(&io.outputs)
            )
        })?;
        let shape = if batched {
            std::iter::once(rows)
                .chain(spec.dims.iter().copied())
                .collect()
        } else {
            spec.dims.clone()
        };
        out.push((
            port.clone(),
            Meta {
                dtype: spec.data_type,
                shape,
            },
        ));
    }
    Ok(out)
}
