//! `PUT /admin/v1/models/{model}/traffic` (body: `{"weights": {"1": 95, "2": 5}}`) and
//! `GET /admin/v1/models/{model}/traffic`: a model's canary traffic weights.

use super::admin::Caller;
use crate::error::{invalid, ApiError};
use crate::rollout;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use kiln_runtime::traffic::Weights;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

type Api<T> = Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTraffic {
    weights: BTreeMap<String, u32>,
}

/// `{"model": .., "weights": {"1": 95, ..}, "origin": ..}`; no weights: `{}` and origin `null`.
fn answer(model: &str, w: Option<&Weights>) -> Json<Value> {
    let weights: serde_json::Map<String, Value> = w
        .map(|w| {
            w.weights
                .iter()
                .map(|(v, w)| (v.to_string(), json!(w)))
                .collect()
        })
        .unwrap_or_default();
    Json(json!({ "model": model, "weights": weights, "origin": w.map(|w| w.origin) }))
}

pub async fn set(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(model): Path<String>,
    body: Bytes,
) -> Api<Json<Value>> {
    who.authorize(&st)?;
    let req: SetTraffic = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "traffic of model '{}': the request must be {{\"weights\": {{\"<version>\": \
             <weight>, ...}}}} with unsigned 32-bit weights: {e}",
            model.escape_debug()
        ))
    })?;
    let weights = rollout::parse_weights(req.weights.iter().map(|(v, w)| (v.as_str(), *w)))?;
    let w = rollout::set_traffic(&st, who.addr, &model, weights)?;
    Ok(answer(&model, Some(&w)))
}

pub async fn get(State(st): State<Arc<AppState>>, Path(model): Path<String>) -> Api<Json<Value>> {
    let w = rollout::traffic(&st, &model)?;
    Ok(answer(&model, w.as_ref()))
}
