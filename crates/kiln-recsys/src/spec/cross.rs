//! Resolving a crossed feature's components (see the module docs of [`super`]): names to
//! feature indices, with the refusals that name the field, and the cross's `max_ids`.

use super::{bad, SparseFeature, MAX_CROSS_IDS};
use kiln_core::Result;

/// The components of cross `i` (named `names`) as feature indices, and the cross's `max_ids`.
pub(super) fn resolve_cross(
    sparse: &[SparseFeature],
    is_cross: &[bool],
    i: usize,
    names: &[String],
) -> Result<(Vec<usize>, usize)> {
    let ctx = |m: String| bad(format!("sparse feature '{}': cross: {m}", sparse[i].name));
    if names.len() < 2 || names.len() > crate::features::MAX_CROSSED {
        return Err(ctx(format!(
            "crosses 2 to {} features, got {}",
            crate::features::MAX_CROSSED,
            names.len()
        )));
    }
    let mut cross = Vec::with_capacity(names.len());
    let mut max_ids = 1usize;
    for n in names {
        if n == &sparse[i].name {
            return Err(ctx("a feature cannot cross itself".into()));
        }
        let Some(c) = sparse.iter().position(|f| &f.name == n) else {
            return Err(ctx(format!("'{n}' is not a sparse feature of the model")));
        };
        if cross.contains(&c) {
            return Err(ctx(format!("'{n}' is listed twice")));
        }
        if is_cross[c] {
            return Err(ctx(format!(
                "'{n}' is itself a cross; list the features it crosses instead"
            )));
        }
        cross.push(c);
        max_ids = max_ids.saturating_mul(sparse[c].max_ids);
    }
    if max_ids > MAX_CROSS_IDS {
        return Err(ctx(format!(
            "the product of the crossed features' max_ids is {max_ids}, more than {MAX_CROSS_IDS} keys per row"
        )));
    }
    Ok((cross, max_ids))
}
