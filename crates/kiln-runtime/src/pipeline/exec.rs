//! Running one pipeline request: every step whose inputs are ready starts at once, model steps
//! go through their member's scheduler (so they batch with everyone else's requests), and
//! tensors pass between steps as shared `Bytes` (renaming a tensor copies no data).
//!
//! A `switch` step chooses which of the steps it lists run; a step whose inputs can no longer
//! be produced (their producers were not chosen) is skipped with them. A step's failure fails
//! the request with the step and the cause named; a step's timeout and the request's deadline
//! both hold.

use super::ops;
use super::spec::{Step, StepKind};
use super::Pipeline;
use kiln_core::{Error, ErrorCode, InferRequest, Result, Tensor};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Where a step stands in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Skipped,
}

/// A step's outputs by port, and the time a model step's request queued at its member.
type StepOutput = (Vec<(String, Tensor)>, Duration);
/// What a finished step gives back: its index, its outputs, and how long it took.
type Finished = (usize, Result<StepOutput>, Duration);
type StepFuture<'a> = Pin<Box<dyn Future<Output = Finished> + Send + 'a>>;

impl Pipeline {
    /// Runs the pipeline on validated `inputs` (in input order). Returns the outputs in output
    /// order, the summed time its model steps queued at their members, and the summed time of
    /// the steps less that (what the pipeline's queue and compute statistics count).
    pub async fn run(
        &self,
        req: &InferRequest,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Tensor>, Duration, Duration)> {
        let run = self.run_steps(req, inputs, deadline);
        match deadline {
            None => run.await,
            Some(d) => tokio::time::timeout_at(d.into(), run)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorCode::Timeout,
                        "request timed out before every step finished",
                    ))
                }),
        }
    }

    async fn run_steps(
        &self,
        req: &InferRequest,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Tensor>, Duration, Duration)> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let n = self.steps.len();
        let mut tensors: HashMap<String, Tensor> =
            inputs.into_iter().map(|t| (t.name.clone(), t)).collect();
        let mut state = vec![State::Waiting; n];
        let mut chosen: HashMap<usize, HashSet<usize>> = HashMap::new();
        let mut running: FuturesUnordered<StepFuture<'_>> = FuturesUnordered::new();
        let mut compute = Duration::ZERO;
        let mut queued = Duration::ZERO;
        loop {
            // start (or skip) every step that can be decided now, until nothing changes
            let mut changed = true;
            while changed {
                changed = false;
                for i in 0..n {
                    if state[i] != State::Waiting {
                        continue;
                    }
                    match self.readiness(i, &state, &chosen, &tensors) {
                        Readiness::Wait => {}
                        Readiness::Skip => {
                            state[i] = State::Skipped;
                            changed = true;
                        }
                        Readiness::Run => {
                            state[i] = State::Running;
                            changed = true;
                            let step = &self.steps[i];
                            let ins: Vec<(String, Tensor)> = step
                                .input_map
                                .iter()
                                .map(|(port, t)| (port.clone(), tensors[t].clone()))
                                .collect();
                            running.push(Box::pin(self.step(i, req, ins, deadline)));
                        }
                    }
                }
            }
            let Some((i, result, took)) = running.next().await else {
                break;
            };
            let step = &self.steps[i];
            let m = &self.step_metrics[i];
            m.requests.inc();
            m.seconds.observe(took.as_secs_f64());
            let (outputs, queue) = result.map_err(|e| {
                m.failures.inc();
                e.prefixed(format!("step '{}'", step.name))
            })?;
            queued += queue;
            compute += took.saturating_sub(queue);
            if let StepKind::Switch { .. } = step.kind {
                chosen.insert(i, self.choice(i, req, &outputs)?);
            } else {
                for (port, mut t) in outputs {
                    if let Some(name) = step.output_map.get(&port) {
                        t.name = name.clone();
                        tensors.insert(name.clone(), t);
                    }
                }
            }
            state[i] = State::Done;
        }
        let outputs = self
            .io
            .outputs
            .iter()
            .map(|spec| {
                let mut t = tensors.get(&spec.name).cloned().ok_or_else(|| {
                    Error::invalid(format!(
                        "output '{}' was not produced: the steps producing it were not chosen",
                        spec.name
                    ))
                })?;
                if t.dtype != spec.data_type
                    || !kiln_core::backend::dims_compatible(&t.shape, &spec.dims)
                {
                    return Err(Error::internal(format!(
                        "output '{}' came out {} {:?}, declared {} {:?} (a member model \
                         changed since the pipeline loaded?)",
                        spec.name, t.dtype, t.shape, spec.data_type, spec.dims
                    )));
                }
                t.name = spec.name.clone();
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outputs, queued, compute))
    }

    /// Whether step `i` can run now, must wait, or will never run.
    fn readiness(
        &self,
        i: usize,
        state: &[State],
        chosen: &HashMap<usize, HashSet<usize>>,
        tensors: &HashMap<String, Tensor>,
    ) -> Readiness {
        if let Some(w) = self.plan.guard[i] {
            match state[w] {
                State::Skipped => return Readiness::Skip,
                State::Done if !chosen.get(&w).is_some_and(|c| c.contains(&i)) => {
                    return Readiness::Skip
                }
                State::Done => {}
                _ => return Readiness::Wait,
            }
        }
        let mut ready = true;
        for t in self.steps[i].input_map.values() {
            if tensors.contains_key(t) {
                continue;
            }
            let producers = &self.plan.producers[t];
            if producers.iter().all(|&p| state[p] == State::Skipped)
                || producers
                    .iter()
                    .all(|&p| state[p] == State::Done || state[p] == State::Skipped)
            {
                // no producer will give it any more
                return Readiness::Skip;
            }
            ready = false;
        }
        if ready {
            Readiness::Run
        } else {
            Readiness::Wait
        }
    }

    /// The steps switch `i` chose from its request parameter or input.
    fn choice(
        &self,
        i: usize,
        req: &InferRequest,
        outputs: &[(String, Tensor)],
    ) -> Result<HashSet<usize>> {
        let StepKind::Switch {
            parameter,
            cases,
            default,
        } = &self.steps[i].kind
        else {
            return Ok(HashSet::new());
        };
        let value = match parameter {
            Some(p) => req.parameters.get(p).cloned().ok_or_else(|| {
                Error::invalid(format!(
                    "step '{}': request parameter '{p}' is required (values: {:?})",
                    self.steps[i].name,
                    cases.keys().collect::<Vec<_>>()
                ))
            })?,
            None => match outputs.first() {
                Some((_, t)) => first_value(t)?,
                None => return Err(Error::internal("the switch's input is missing")),
            },
        };
        let names = match (cases.get(&value), default) {
            (Some(c), _) => c,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(Error::invalid(format!(
                    "step '{}': no case for '{value}' (cases: {:?})",
                    self.steps[i].name,
                    cases.keys().collect::<Vec<_>>()
                )))
            }
        };
        Ok(names
            .iter()
            .filter_map(|n| self.steps.iter().position(|s| &s.name == n))
            .collect())
    }

    /// Runs step `i` on its inputs (port, tensor).
    fn step<'a>(
        &'a self,
        i: usize,
        req: &'a InferRequest,
        inputs: Vec<(String, Tensor)>,
        deadline: Option<Instant>,
    ) -> StepFuture<'a> {
        let step = &self.steps[i];
        let started = Instant::now();
        let deadline = match (step.timeout.map(|t| started + t), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Box::pin(async move {
            let work = self.compute_step(i, step, req, inputs, deadline);
            let result = match deadline {
                None => work.await,
                Some(d) => tokio::time::timeout_at(d.into(), work)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorCode::Timeout,
                            match step.timeout {
                                Some(t) => format!("timed out after {t:?}"),
                                None => "timed out (the request's deadline passed)".into(),
                            },
                        ))
                    }),
            };
            (i, result, started.elapsed())
        })
    }

    async fn compute_step(
        &self,
        i: usize,
        step: &Step,
        req: &InferRequest,
        inputs: Vec<(String, Tensor)>,
        deadline: Option<Instant>,
    ) -> Result<StepOutput> {
        let get = |port: &str| -> Result<&Tensor> {
            inputs
                .iter()
                .find(|(p, _)| p == port)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::internal(format!("input '{port}' missing")))
        };
        let one = |t: Tensor| Ok((vec![("output".to_string(), t)], Duration::ZERO));
        match &step.kind {
            StepKind::Model { model, version } => {
                let repo = self
                    .repo
                    .upgrade()
                    .ok_or_else(|| Error::unavailable("the repository is shutting down"))?;
                let routing = req.parameters.get("routing_key").map(String::as_str);
                let member = repo.route(model, *version, routing)?;
                let tensors = inputs
                    .into_iter()
                    .map(|(port, mut t)| {
                        t.name = port;
                        t
                    })
                    .collect();
                // the pipeline's tensors were checked when they were made
                let mut sub = InferRequest::new(tensors);
                sub.id = req.id.clone();
                sub.parameters = req.parameters.clone();
                sub.timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if sub.timeout == Some(Duration::ZERO) {
                    // the same words as a step that times out while queued or computing
                    return Err(Error::new(
                        ErrorCode::Timeout,
                        "timed out before the step started: its deadline had passed",
                    ));
                }
                let answer = member.infer_timed(sub).await?;
                let io = member.io();
                let outputs = io
                    .outputs
                    .iter()
                    .zip(answer.outputs)
                    .map(|(spec, t)| (spec.name.clone(), t))
                    .collect();
                Ok((outputs, answer.queue))
            }
            StepKind::Retrieve { k, .. } => {
                let index = self.items[&i].clone();
                let query = get("query")?.clone();
                let k = *k;
                let want_embeddings = step.output_map.contains_key("embeddings");
                let (ids, scores, emb) =
                    tokio::task::spawn_blocking(move || index.search(&query, k, want_embeddings))
                        .await
                        .map_err(|e| Error::internal(format!("retrieve task failed: {e}")))??;
                let mut out = vec![("ids".to_string(), ids), ("scores".to_string(), scores)];
                out.extend(emb.map(|e| ("embeddings".to_string(), e)));
                Ok((out, Duration::ZERO))
            }
            StepKind::TopK { k } => {
                let (idx, val) = ops::topk(get("input")?, *k)?;
                Ok((
                    vec![("indices".into(), idx), ("values".into(), val)],
                    Duration::ZERO,
                ))
            }
            StepKind::Gather { axis } => one(ops::gather(get("data")?, get("indices")?, *axis)?),
            StepKind::Repeat { times } => {
                let n = match inputs.iter().find(|(p, _)| p == "like") {
                    Some((_, like)) => like.shape.first().copied().unwrap_or(1).max(0) as usize,
                    None => times.unwrap_or(1),
                };
                one(ops::repeat(get("input")?, n)?)
            }
            StepKind::Concat { axis } => {
                let parts: Vec<&Tensor> = (0..inputs.len())
                    .map(|k| get(&format!("input_{k}")))
                    .collect::<Result<_>>()?;
                one(ops::concat(&parts, *axis)?)
            }
            StepKind::Slice { axis, start, end } => {
                one(ops::slice(get("input")?, *axis, *start, *end)?)
            }
            StepKind::Reshape { shape } => one(ops::reshape(get("input")?, shape)?),
            // the switch reads its input once it has run (`choice`)
            StepKind::Switch {
                parameter: None, ..
            } => Ok((
                vec![("input".into(), get("input")?.clone())],
                Duration::ZERO,
            )),
            StepKind::Switch { .. } => Ok((Vec::new(), Duration::ZERO)),
        }
    }
}

/// The first element of `t` as text: a number in decimal, BYTES as UTF-8.
fn first_value(t: &Tensor) -> Result<String> {
    use kiln_core::DataType as D;
    let w = t.dtype.size();
    let bytes = match w {
        Some(w) if t.data.len() >= w => &t.data[..w],
        Some(_) => return Err(Error::invalid("input: the switch's input is empty")),
        None => {
            let all = t.byte_elements()?;
            let first = all
                .first()
                .ok_or_else(|| Error::invalid("input: the switch's input is empty"))?;
            return Ok(String::from_utf8_lossy(first).into_owned());
        }
    };
    let mut b8 = [0u8; 8];
    b8[..bytes.len()].copy_from_slice(bytes);
    Ok(match t.dtype {
        D::Bool => (bytes[0] != 0).to_string(),
        D::Int8 => (bytes[0] as i8).to_string(),
        D::Int16 => i16::from_le_bytes([b8[0], b8[1]]).to_string(),
        D::Int32 => i32::from_le_bytes([b8[0], b8[1], b8[2], b8[3]]).to_string(),
        D::Int64 => i64::from_le_bytes(b8).to_string(),
        D::Uint8 => bytes[0].to_string(),
        D::Uint16 => u16::from_le_bytes([b8[0], b8[1]]).to_string(),
        D::Uint32 => u32::from_le_bytes([b8[0], b8[1], b8[2], b8[3]]).to_string(),
        D::Uint64 => u64::from_le_bytes(b8).to_string(),
        other => {
            return Err(Error::invalid(format!(
                "input: a switch reads an integer, BOOL or BYTES value, not {other}"
            )))
        }
    })
}

/// Whether a step can run.
enum Readiness {
    Run,
    Wait,
    Skip,
}
