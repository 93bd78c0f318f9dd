//! What the test reads from the replicas and the learner over HTTP: rows, metrics, delta
//! sources, predictions.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Keys, Probe, MODEL};
use crate::common::http;

/// The rows of `keys` of `table` on a rows endpoint (`None`: no row).
pub fn rows(port: u16, table: &str, keys: &[u64]) -> Vec<Option<Vec<f32>>> {
    crate::common::table_rows(port, MODEL, table, keys)
}

/// The first key whose row on `replica` differs from the learner's, or that the learner has
/// no row for; `Ok` when every row is the learner's.
pub fn same_rows(learner: u16, replica: u16, keys: &Keys) -> Result<(), String> {
    for (table, keys) in keys {
        let keys: Vec<u64> = keys.iter().copied().collect();
        let ours = rows(learner, table, &keys);
        let theirs = rows(replica, table, &keys);
        for ((k, a), b) in keys.iter().zip(&ours).zip(&theirs) {
            if a.is_none() || a != b {
                return Err(format!("{table}/{k}: learner {a:?}, replica {b:?}"));
            }
        }
    }
    Ok(())
}

/// The sum of a metric's series on a `/metrics` endpoint whose labels contain `labels`.
pub fn metric(port: u16, name: &str, labels: &str) -> f64 {
    let (status, body) = http(port, "GET", "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(source, table) -> last_sequence` of every delta source a replica applied.
pub fn sources(port: u16) -> BTreeMap<(String, String), u64> {
    let (status, body) = http(port, "GET", &format!("/admin/v1/models/{MODEL}/tables"), "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out = BTreeMap::new();
    for t in v["tables"].as_array().expect("tables") {
        for s in t["sources"].as_array().expect("sources") {
            let key = (
                s["source"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
            );
            out.insert(key, s["last_sequence"].as_u64().unwrap());
        }
    }
    out
}

/// The served probability of `p`.
pub fn predict(port: u16, p: &Probe) -> f64 {
    let mut genres = p.genres.clone();
    genres.resize(4, String::new());
    let req = json!({"inputs": [
        {"name": "user_id", "shape": [1, 1], "datatype": "BYTES", "data": [p.user]},
        {"name": "item_id", "shape": [1, 1], "datatype": "BYTES", "data": [p.item]},
        {"name": "genres", "shape": [1, 4], "datatype": "BYTES", "data": genres},
        {"name": "hour", "shape": [1, 1], "datatype": "INT64", "data": [p.hour]},
    ]});
    let (status, body) = http(
        port,
        "POST",
        &format!("/v2/models/{MODEL}/infer"),
        &req.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["outputs"][0]["data"][0].as_f64().expect("a probability")
}
