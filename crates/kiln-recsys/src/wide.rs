//! The wide part of a model (logistic regression): the load-time checks of its features and
//! tensors. Its forward stage, [`crate::model`]'s wide sum, adds each wide feature's summed
//! dim-1 rows and `wide.bias` to the logit.
//!
//! A wide-only model (every feature wide) has neither MLP; a model with deep features has both,
//! and when it also has a wide part its top MLP gives the one logit the wide part adds to.

use crate::spec::{Part, RecsysSpec};
use crate::tables::ModelTables;
use crate::weights::{Linear, WeightsFile};
use kiln_core::{Error, Result};

/// The tensor holding the wide part's bias (`[1]`, optional).
pub const BIAS: &str = "wide.bias";

/// The loaded wide part: which features are wide, and the bias.
#[derive(Debug, Clone, Default)]
pub(crate) struct WidePart {
    /// Indices of the wide features in the spec's `sparse`.
    pub features: Vec<usize>,
    /// `wide.bias`, if the weights have it.
    pub bias: Option<f32>,
}

impl WidePart {
    /// Whether the model has anything to add to the logit.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty() && self.bias.is_none()
    }
}

/// The MLPs (bottom, top) of the model: read from the weights when it has deep features; none
/// for a wide-only model, whose weights must not hold any (they would be silently unused).
pub(crate) fn mlps(spec: &RecsysSpec, weights: &WeightsFile) -> Result<(Vec<Linear>, Vec<Linear>)> {
    if !spec.is_wide_only() {
        return Ok((weights.mlp("bottom")?, weights.mlp("top")?));
    }
    for prefix in ["bottom", "top"] {
        let tensor = format!("{prefix}.0.weight");
        if weights.has(&tensor) {
            return Err(Error::invalid(format!(
                "weights: '{tensor}' is part of a {prefix} MLP, but every sparse feature is part = \"wide\" (a wide-only model has no MLPs); mark the deep features part = \"deep\" or drop the {prefix}.* tensors"
            )));
        }
    }
    Ok((Vec::new(), Vec::new()))
}

/// Reads `wide.bias` and checks the wide features against their tables (dim 1) and the model's
/// output (one logit: `out_dim` must be 1 when there is a wide part).
pub(crate) fn load(
    spec: &RecsysSpec,
    weights: &WeightsFile,
    tables: &ModelTables,
    out_dim: usize,
) -> Result<WidePart> {
    let bias = if weights.has(BIAS) {
        let (shape, v) = weights.f32(BIAS)?;
        if shape != [1] {
            return Err(Error::invalid(format!(
                "weights: '{BIAS}' has shape {shape:?}; [1] expected"
            )));
        }
        Some(v[0])
    } else {
        None
    };
    let mut features = Vec::new();
    for (i, f) in spec.sparse.iter().enumerate() {
        if f.part != Part::Wide {
            continue;
        }
        let dim = tables.get(f.table).dim();
        if dim != 1 {
            return Err(Error::invalid(format!(
                "sparse feature '{}' is part = \"wide\": its table '{}' must have dim 1 (one weight per key), it has dim {dim}",
                f.name, spec.tables[f.table].name
            )));
        }
        features.push(i);
    }
    let wide = WidePart { features, bias };
    if !wide.is_empty() && out_dim != 1 {
        let why = match wide.features.first() {
            Some(&i) => format!("wide feature '{}'", spec.sparse[i].name),
            None => format!("'{BIAS}'"),
        };
        return Err(Error::invalid(format!(
            "{why} adds to the logit, so the top MLP must give 1 output; it gives {out_dim}"
        )));
    }
    Ok(wide)
}
