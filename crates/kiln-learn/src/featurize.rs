//! Impression events to [`Sample`]s: each sparse input's ids hashed into table keys with
//! [`kiln_recsys::features::key_of`], the function serving applies, so a trained row lands
//! exactly where serving looks it up.
//!
//! Per sparse input (in spec order), the event field it reads ([`ModelInfo::fields`]) gives its
//! ids, which must have the input's type: integers for an INT64 input, strings for a BYTES one
//! (anything else is a [`EventErrorKind::WrongType`] naming the field). Serving refuses a row
//! with more than `max_ids` ids; the learner keeps the first `max_ids`, as a client truncating
//! its request would send them, and counts the impression in
//! [`FeaturizeStats::truncated`]. Padding ids (`-1`, `""`) give no key, as in serving. A
//! missing field means no ids. A crossed input reads no field: its keys are
//! [`kiln_recsys::features::cross_keys`] of its components' keys (after their truncation and
//! padding), as serving computes them from the components' inputs. `dense` must have the model's dense width (when the model has a
//! dense input and `[features] dense` is on; off, the dense input is zeros).

use crate::config::{FeaturesConfig, ModelInfo};
use crate::event::{EventError, EventErrorKind, Id, Impression};
use crate::sample::Sample;
use kiln_core::DataType;
use kiln_recsys::features::{cross_keys, key_of, Hashing, RawId, PADDING};
use std::collections::HashMap;

/// One sparse input's hashing settings.
#[derive(Debug, Clone)]
struct Input {
    name: String,
    field: String,
    hash: Hashing,
    buckets: Option<u64>,
    bytes: bool,
    max_ids: usize,
    /// A cross's components (input indices); empty for an input read from its field.
    cross: Vec<usize>,
}

/// Counters of what featurizing changed or refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeaturizeStats {
    /// Per sparse input (spec order): impressions whose ids were cut to `max_ids`.
    pub truncated: Vec<u64>,
}

/// Turns impression events into samples for one model.
#[derive(Debug, Clone)]
pub struct Featurizer {
    inputs: Vec<Input>,
    /// Event field to the inputs reading it.
    by_field: HashMap<String, Vec<usize>>,
    dense_width: Option<usize>,
    read_dense: bool,
    stats: FeaturizeStats,
}

impl Featurizer {
    /// A featurizer for `model` (checked by [`ModelInfo::open`]) with the `[features]` settings.
    pub fn new(model: &ModelInfo, features: &FeaturesConfig) -> Self {
        let inputs: Vec<Input> = model
            .spec
            .sparse
            .iter()
            .zip(&model.fields)
            .map(|(f, field)| Input {
                name: f.name.clone(),
                field: field.clone(),
                hash: f.hash,
                buckets: f.buckets,
                bytes: f.data_type == DataType::Bytes,
                max_ids: f.max_ids,
                cross: f.cross.clone(),
            })
            .collect();
        let mut by_field: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, input) in inputs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.cross.is_empty())
        {
            by_field.entry(input.field.clone()).or_default().push(i);
        }
        Featurizer {
            stats: FeaturizeStats {
                truncated: vec![0; inputs.len()],
            },
            inputs,
            by_field,
            dense_width: model.dense_width,
            read_dense: features.dense,
        }
    }

    /// What was counted so far.
    pub fn stats(&self) -> &FeaturizeStats {
        &self.stats
    }

    /// The sample of `imp` (label `false`), entered at `seen_ms`.
    pub fn featurize(&mut self, imp: &Impression<'_>, seen_ms: u64) -> Result<Sample, EventError> {
        let mut keys: Vec<Vec<u64>> = vec![Vec::new(); self.inputs.len()];
        let mut truncated = Vec::new();
        for (field, value) in &imp.features {
            let Some(targets) = self.by_field.get(field.as_ref()) else {
                continue;
            };
            for &i in targets {
                let input = &self.inputs[i];
                let mut ids = value.ids();
                if ids.len() > input.max_ids {
                    ids = &ids[..input.max_ids];
                    truncated.push(i);
                }
                let out = &mut keys[i];
                out.clear();
                out.reserve_exact(ids.len());
                for id in ids {
                    let raw = match (id, input.bytes) {
                        (Id::Str(s), true) => RawId::Bytes(s.as_bytes()),
                        (Id::Int(v), false) => RawId::Int(*v),
                        (Id::Str(s), false) => {
                            return Err(wrong(field, input, &format!("the string \"{s}\"")))
                        }
                        (Id::Int(v), true) => {
                            return Err(wrong(field, input, &format!("the integer {v}")))
                        }
                    };
                    let k = key_of(raw, input.hash, input.buckets);
                    if k != PADDING {
                        out.push(k);
                    }
                }
            }
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if input.cross.is_empty() {
                continue;
            }
            let mut out = std::mem::take(&mut keys[i]);
            out.clear();
            let components: Vec<&[u64]> = input.cross.iter().map(|&c| keys[c].as_slice()).collect();
            cross_keys(&components, input.buckets, &mut out);
            keys[i] = out;
        }
        let dense = self.dense(imp)?;
        for i in truncated {
            self.stats.truncated[i] += 1;
        }
        Ok(Sample {
            id: imp.id.to_string(),
            ts_ms: imp.ts_ms,
            label: false,
            keys,
            dense,
            seen_ms,
        })
    }

    fn dense(&self, imp: &Impression<'_>) -> Result<Vec<f32>, EventError> {
        let Some(width) = self.dense_width else {
            return Ok(Vec::new());
        };
        if !self.read_dense {
            return Ok(vec![0.0; width]);
        }
        let Some(d) = &imp.dense else {
            return Err(EventError::new(
                EventErrorKind::MissingField,
                format!("missing field `dense` (the model takes {width} values)"),
            ));
        };
        if d.len() != width {
            return Err(EventError::new(
                EventErrorKind::DenseWidth,
                format!("dense has {} values, the model takes {width}", d.len()),
            ));
        }
        if let Some(j) = d.iter().position(|v| !v.is_finite()) {
            return Err(EventError::new(
                EventErrorKind::WrongType,
                format!("dense[{j}] is not a finite f32"),
            ));
        }
        Ok(d.clone())
    }
}

fn wrong(field: &str, input: &Input, got: &str) -> EventError {
    let want = if input.bytes {
        "strings (BYTES)"
    } else {
        "integers (INT64)"
    };
    EventError::new(
        EventErrorKind::WrongType,
        format!(
            "features.{field}: {got}, but sparse input '{}' takes {want}",
            input.name
        ),
    )
}
