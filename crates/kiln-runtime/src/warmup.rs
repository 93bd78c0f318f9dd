//! Warm-up: one zero-filled batch through a freshly loaded model, so that lazily built state
//! is ready and a broken model fails its load instead of its first request.

use kiln_core::backend::LoadedModel;
use kiln_core::{DataType, ModelConfig, Result, Tensor};

/// Runs one batch of a single row (variable dims as 1) through `model`. Ragged inputs are sent
/// empty (a row with no values), so their companion lengths of zero stay consistent.
pub fn warm_up(model: &dyn LoadedModel, config: &ModelConfig) -> Result<()> {
    let inputs: Vec<Tensor> = model
        .io()
        .inputs
        .iter()
        .map(|spec| {
            let mut shape: Vec<i64> = spec
                .dims
                .iter()
                .map(|&d| if d < 0 { 1 } else { d })
                .collect();
            if config.max_batch_size > 0 {
                shape.insert(0, if spec.allow_ragged_batch { 0 } else { 1 });
            }
            let n: i64 = shape.iter().product();
            let data = match spec.data_type.size() {
                Some(w) => vec![0u8; n as usize * w],
                None => vec![0u8; n as usize * 4],
            };
            debug_assert!(spec.data_type != DataType::Bytes || data.len() % 4 == 0);
            Tensor {
                name: spec.name.clone(),
                dtype: spec.data_type,
                shape,
                data: data.into(),
            }
        })
        .collect();
    model.execute(&inputs).map(|_| ())
}
