//! The `[[step]]` tables of a pipeline's `config.toml`, read into typed steps. Each step is a
//! served model (`model = "name"`, optional `version`) or a built-in operation (`op = "..."`);
//! errors name the step by position and name, and the field.

use kiln_core::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One step as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    model: Option<String>,
    version: Option<u64>,
    op: Option<String>,
    #[serde(default)]
    input_map: BTreeMap<String, String>,
    #[serde(default)]
    output_map: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
    table: Option<String>,
    k: Option<usize>,
    axis: Option<i64>,
    times: Option<usize>,
    start: Option<i64>,
    end: Option<i64>,
    shape: Option<Vec<i64>>,
    parameter: Option<String>,
    cases: Option<BTreeMap<String, Vec<String>>>,
    default: Option<Vec<String>>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// A served model (or another pipeline), through its own scheduler.
    Model {
        /// Model name.
        model: String,
        /// Pinned version; `None` follows the model's routing (latest or its traffic split).
        version: Option<u64>,
    },
    /// Exact top-k by dot product against the item table `table`.
    Retrieve {
        /// Table name: `<table>.safetensors` in the pipeline's version directory.
        table: String,
        /// Items per query.
        k: usize,
    },
    /// Top-k along the last axis.
    TopK {
        /// How many.
        k: usize,
    },
    /// `numpy.take(data, indices, axis)`.
    Gather {
        /// Axis.
        axis: usize,
    },
    /// One row tiled `times` times (or as many as the `like` input has rows).
    Repeat {
        /// Rows, unless a `like` input gives them.
        times: Option<usize>,
    },
    /// `numpy.concatenate` of `input_0`, `input_1`, ...
    Concat {
        /// Axis; negative counts from the end.
        axis: i64,
    },
    /// A range along one axis.
    Slice {
        /// Axis.
        axis: usize,
        /// First index.
        start: i64,
        /// End (exclusive); `None` = to the end.
        end: Option<i64>,
    },
    /// A new shape over the same data.
    Reshape {
        /// Target shape; one `-1` is inferred.
        shape: Vec<i64>,
    },
    /// Chooses which guarded steps run.
    Switch {
        /// The request parameter read; `None` reads the `input` tensor's first element.
        parameter: Option<String>,
        /// Value -> the steps that run for it.
        cases: BTreeMap<String, Vec<String>>,
        /// The steps that run for any other value (none: such a value is an error).
        default: Option<Vec<String>>,
    },
}

impl StepKind {
    /// How errors and the config view name the kind (`model`, `retrieve`, `topk`, ...).
    pub fn op_name(&self) -> &'static str {
        match self {
            StepKind::Model { .. } => "model",
            StepKind::Retrieve { .. } => "retrieve",
            StepKind::TopK { .. } => "topk",
            StepKind::Gather { .. } => "gather",
            StepKind::Repeat { .. } => "repeat",
            StepKind::Concat { .. } => "concat",
            StepKind::Slice { .. } => "slice",
            StepKind::Reshape { .. } => "reshape",
            StepKind::Switch { .. } => "switch",
        }
    }

    /// The input ports the kind accepts (`None`: any, for models, whose inputs the member
    /// model defines) and those it requires.
    fn ports(&self) -> Option<(&'static [&'static str], &'static [&'static str])> {
        Some(match self {
            StepKind::Model { .. } => return None,
            StepKind::Retrieve { .. } => (&["query"], &["query"]),
            StepKind::TopK { .. } => (&["input"], &["input"]),
            StepKind::Gather { .. } => (&["data", "indices"], &["data", "indices"]),
            StepKind::Repeat { .. } => (&["input", "like"], &["input"]),
            StepKind::Concat { .. } => (&[], &[]),
            StepKind::Slice { .. } | StepKind::Reshape { .. } => (&["input"], &["input"]),
            StepKind::Switch { .. } => (&["input"], &[]),
        })
    }

    /// The output ports the kind produces (`None`: the member model's outputs).
    pub fn outputs(&self) -> Option<&'static [&'static str]> {
        Some(match self {
            StepKind::Model { .. } => return None,
            StepKind::Retrieve { .. } => &["ids", "scores", "embeddings"],
            StepKind::TopK { .. } => &["indices", "values"],
            StepKind::Switch { .. } => &[],
            _ => &["output"],
        })
    }
}

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: StepKind,
    /// Input port -> pipeline tensor.
    pub input_map: BTreeMap<String, String>,
    /// Output port -> pipeline tensor.
    pub output_map: BTreeMap<String, String>,
    /// The step's own timeout.
    pub timeout: Option<Duration>,
}

/// Reads every `[[step]]`; errors name `step[i] 'name'` and the field.
pub fn parse_steps(tables: &[toml::Table]) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let shown = t
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("step[{i}]"), |n| format!("step[{i}] '{n}'"));
        let raw: RawStep = t
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| Error::invalid(format!("{shown}: {}", e.message())))?;
        let step = typed(raw).map_err(|e| Error::invalid(format!("{shown}: {e}")))?;
        if steps.iter().any(|s| s.name == step.name) {
            return Err(Error::invalid(format!(
                "{shown}: another step is already named '{}'",
                step.name
            )));
        }
        steps.push(step);
    }
    Ok(steps)
}

/// The typed step of `raw`, refusing fields that do not apply to its kind.
fn typed(raw: RawStep) -> std::result::Result<Step, String> {
    if raw.name.is_empty() {
        return Err("name: must not be empty".into());
    }
    let given: Vec<(&str, bool)> = vec![
        ("version", raw.version.is_some()),
        ("table", raw.table.is_some()),
        ("k", raw.k.is_some()),
        ("axis", raw.axis.is_some()),
        ("times", raw.times.is_some()),
        ("start", raw.start.is_some()),
        ("end", raw.end.is_some()),
        ("shape", raw.shape.is_some()),
        ("parameter", raw.parameter.is_some()),
        ("cases", raw.cases.is_some()),
        ("default", raw.default.is_some()),
    ];
    let need = |v: Option<usize>, field: &str| v.ok_or_else(|| format!("{field}: required"));
    let (kind, allowed): (StepKind, &[&str]) = match (&raw.model, raw.op.as_deref()) {
        (Some(_), Some(op)) => {
            return Err(format!(
                "has both model and op '{op}': a step is a model or an operation"
            ))
        }
        (None, None) => return Err("needs model = \"<name>\" or op = \"<operation>\"".into()),
        (Some(m), None) => {
            if m.is_empty() {
                return Err("model: must not be empty".into());
            }
            let kind = StepKind::Model {
                model: m.clone(),
                version: raw.version,
            };
            (kind, &["version"])
        }
        (None, Some(op)) => match op {
            "retrieve" => {
                let table = raw.table.clone().ok_or("table: required")?;
                let k = need(raw.k, "k")?;
                (StepKind::Retrieve { table, k }, &["table", "k"])
            }
            "topk" => (
                StepKind::TopK {
                    k: need(raw.k, "k")?,
                },
                &["k"],
            ),
            "gather" => {
                let axis = non_negative(raw.axis.unwrap_or(0), "axis")?;
                (StepKind::Gather { axis }, &["axis"])
            }
            "repeat" => (StepKind::Repeat { times: raw.times }, &["times"]),
            "concat" => (
                StepKind::Concat {
                    axis: raw.axis.unwrap_or(0),
                },
                &["axis"],
            ),
            "slice" => (
                StepKind::Slice {
                    axis: non_negative(raw.axis.unwrap_or(0), "axis")?,
                    start: raw.start.unwrap_or(0),
                    end: raw.end,
                },
                &["axis", "start", "end"],
            ),
            "reshape" => (
                StepKind::Reshape {
                    shape: raw.shape.clone().ok_or("shape: required")?,
                },
                &["shape"],
            ),
            "switch" => {
                let cases = raw.cases.clone().ok_or("cases: required")?;
                (
                    StepKind::Switch {
                        parameter: raw.parameter.clone(),
                        cases,
                        default: raw.default.clone(),
                    },
                    &["parameter", "cases", "default"],
                )
            }
            other => {
                return Err(format!(
                    "op: unknown operation '{other}' (retrieve, topk, gather, repeat, concat, \
                     slice, reshape, switch)"
                ))
            }
        },
    };
    if let Some((field, _)) = given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
        return Err(format!(
            "{field}: does not apply to a {} step",
            kind.op_name()
        ));
    }
    check_ports(&kind, &raw.input_map, &raw.output_map)?;
    match &kind {
        StepKind::Retrieve { k: 0, .. } | StepKind::TopK { k: 0 } => {
            return Err("k: must be at least 1".into())
        }
        StepKind::Repeat { times: Some(0) } => return Err("times: must be at least 1".into()),
        StepKind::Repeat { times: None } if !raw.input_map.contains_key("like") => {
            return Err("times: required unless input_map has 'like'".into())
        }
        StepKind::Switch {
            parameter: None, ..
        } if !raw.input_map.contains_key("input") => {
            return Err("switch needs parameter = \"<name>\" or input_map.input".into())
        }
        StepKind::Switch {
            parameter: Some(_), ..
        } if raw.input_map.contains_key("input") => {
            return Err("switch reads a parameter or input_map.input, not both".into())
        }
        _ => {}
    }
    Ok(Step {
        name: raw.name,
        kind,
        input_map: raw.input_map,
        output_map: raw.output_map,
        timeout: raw.timeout_ms.map(Duration::from_millis),
    })
}

fn non_negative(x: i64, field: &str) -> std::result::Result<usize, String> {
    usize::try_from(x).map_err(|_| format!("{field}: {x} must not be negative"))
}

/// Checks the port names of an operation step's maps.
fn check_ports(
    kind: &StepKind,
    inputs: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    for (port, tensor) in inputs.iter().chain(outputs) {
        if tensor.is_empty() {
            return Err(format!("port '{port}': the tensor name must not be empty"));
        }
    }
    if let StepKind::Concat { .. } = kind {
        if inputs.len() < 2 {
            return Err("input_map: concat needs input_0 and input_1 at least".into());
        }
        for i in 0..inputs.len() {
            if !inputs.contains_key(&format!("input_{i}")) {
                return Err(format!(
                    "input_map: concat inputs are input_0 .. input_{}; input_{i} is missing",
                    inputs.len() - 1
                ));
            }
        }
    } else if let Some((allowed, required)) = kind.ports() {
        if let Some(p) = inputs.keys().find(|p| !allowed.contains(&p.as_str())) {
            return Err(format!(
                "input_map: '{p}' is not an input of {} (inputs: {allowed:?})",
                kind.op_name()
            ));
        }
        if let Some(p) = required.iter().find(|p| !inputs.contains_key(**p)) {
            return Err(format!("input_map: '{p}' is required"));
        }
    }
    if let Some(allowed) = kind.outputs() {
        if let Some(p) = outputs.keys().find(|p| !allowed.contains(&p.as_str())) {
            return Err(format!(
                "output_map: '{p}' is not an output of {} (outputs: {allowed:?})",
                kind.op_name()
            ));
        }
    }
    if !matches!(kind, StepKind::Switch { .. }) && outputs.is_empty() {
        return Err("output_map: the step produces nothing".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(text: &str) -> Result<Vec<Step>> {
        #[derive(Deserialize)]
        struct Doc {
            step: Vec<toml::Table>,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        parse_steps(&doc.step)
    }

    #[test]
    fn model_and_op_steps_parse() {
        let s = steps(
            r#"
            [[step]]
            name = "tower"
            model = "user_tower"
            version = 2
            input_map = { features = "f" }
            output_map = { embedding = "e" }
            timeout_ms = 20
            [[step]]
            name = "recall"
            op = "retrieve"
            table = "items"
            k = 100
            input_map = { query = "e" }
            output_map = { ids = "ids" }
            "#,
        )
        .unwrap();
        assert_eq!(
            s[0].kind,
            StepKind::Model {
                model: "user_tower".into(),
                version: Some(2)
            }
        );
        assert_eq!(s[0].timeout, Some(Duration::from_millis(20)));
        assert_eq!(
            s[1].kind,
            StepKind::Retrieve {
                table: "items".into(),
                k: 100
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                "[[step]]\nname='a'\nop='topk'\nk=3\ntimes=2\ninput_map={input='x'}\noutput_map={indices='i'}",
                "step[0] 'a': times: does not apply to a topk step",
            ),
            (
                "[[step]]\nname='a'\nop='sort'\n",
                "step[0] 'a': op: unknown operation 'sort'",
            ),
            (
                "[[step]]\nname='a'\nop='topk'\nk=3\ninput_map={values='x'}\noutput_map={indices='i'}",
                "step[0] 'a': input_map: 'values' is not an input of topk",
            ),
            (
                "[[step]]\nname='a'\nop='concat'\ninput_map={input_0='x', input_2='y'}\noutput_map={output='o'}",
                "input_1 is missing",
            ),
            (
                "[[step]]\nname='a'\nmodel='m'\nop='topk'\n",
                "a step is a model or an operation",
            ),
            (
                "[[step]]\nname='a'\nmodel='m'\ninput_map={x='x'}\noutput_map={y='y'}\n[[step]]\nname='a'\nmodel='n'\noutput_map={y='z'}",
                "step[1] 'a': another step is already named 'a'",
            ),
            (
                "[[step]]\nname='a'\nmodel='m'\nmodle_version=1\n",
                "step[0] 'a': unknown field `modle_version`",
            ),
            (
                "[[step]]\nname='a'\nop='repeat'\ninput_map={input='x'}\noutput_map={output='o'}",
                "times: required unless input_map has 'like'",
            ),
        ];
        for (text, want) in cases {
            let e = steps(text).unwrap_err();
            assert!(e.message.contains(want), "{text}\n=> {e}");
        }
    }
}
