//! The Grafana dashboards' panels as the end-to-end tests check them: every query with its
//! template variables filled in, which test gives it data, and the wait until every panel of a
//! set answers with data.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::query;
use crate::learn_common::pause;

/// The dashboards under deploy/grafana.
pub const BOARDS: [&str; 3] = ["serving.json", "sparse-learning.json", "datacache.json"];

/// Which end-to-end test gives a panel query its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// `monitoring_e2e.rs`: `kiln serve` and a `kiln learn` that publishes over HTTP.
    Serving,
    /// `monitoring_sources_e2e.rs`: `kiln serve --delta-source kafka://...` and a `kiln learn`
    /// reading its events from Kafka (the delta topic, the learner's consumer lag).
    DeltaTopic,
    /// `monitoring_sources_e2e.rs`: `kiln cache mount` (the dataset cache dashboard).
    DatasetCache,
}

/// The test that feeds `expr` of `board`.
pub fn feed(board: &str, expr: &str) -> Feed {
    if board == "datacache.json" {
        Feed::DatasetCache
    } else if expr.contains("kiln_delta_source_") || expr.contains("kiln_learn_consumer_lag") {
        Feed::DeltaTopic
    } else {
        Feed::Serving
    }
}

/// Every panel query of every dashboard.
pub fn all_queries(root: &Path) -> Vec<PanelQuery> {
    BOARDS
        .iter()
        .flat_map(|b| dashboard_queries(root, b))
        .collect()
}

/// Waits until each of `queries` returns data from the Prometheus on `port`, for at most
/// `patience`. A query Prometheus refuses fails at once; at the deadline the failure lists each
/// panel still without data, by dashboard and title, with its empty queries.
pub fn wait_for_panels(port: u16, queries: &[PanelQuery], patience: Duration) {
    assert!(!queries.is_empty(), "no panel queries to check");
    let deadline = Instant::now() + patience;
    loop {
        let mut empty: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for (board, title, expr) in queries {
            match query(port, expr) {
                Err(e) => panic!("{board}: panel {title:?}: Prometheus refused {expr}: {e}"),
                Ok(r) if r.is_empty() => empty.entry((board, title)).or_default().push(expr),
                Ok(_) => {}
            }
        }
        if empty.is_empty() {
            let mut panels: Vec<(&str, &str)> = queries
                .iter()
                .map(|(b, t, _)| (b.as_str(), t.as_str()))
                .collect();
            panels.dedup();
            eprintln!(
                "{} panels ({} queries) return data",
                panels.len(),
                queries.len()
            );
            return;
        }
        if Instant::now() >= deadline {
            let lines: Vec<String> = empty
                .iter()
                .map(|((board, title), exprs)| {
                    format!(
                        "{board}: panel {title:?} has no data from: {}",
                        exprs.join(" ; ")
                    )
                })
                .collect();
            panic!(
                "{} dashboard panels return no data after {patience:?}:\n{}",
                lines.len(),
                lines.join("\n")
            );
        }
        pause(1000);
    }
}

/// One query of a dashboard panel: `(dashboard, panel title, expression)`.
pub type PanelQuery = (String, String, String);

/// Every panel query of the dashboard `file` (under deploy/grafana), with its template
/// variables filled in as Grafana would with "All" selected and a 1 s scrape interval.
pub fn dashboard_queries(root: &Path, file: &str) -> Vec<PanelQuery> {
    let path = root.join("deploy/grafana").join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let board: Value = serde_json::from_str(&text).unwrap();
    let vars: Vec<String> = board["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mut out = Vec::new();
    for panel in board["panels"].as_array().unwrap() {
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        for t in targets {
            let mut expr = t["expr"].as_str().unwrap().to_string();
            expr = expr.replace("$__rate_interval", "10s");
            for var in &vars {
                expr = expr.replace(&format!("${var}"), ".*");
            }
            assert!(
                !expr.contains('$'),
                "{file}: panel {:?} uses a variable the dashboard does not define: {expr}",
                panel["title"]
            );
            out.push((
                file.to_string(),
                panel["title"].as_str().unwrap().to_string(),
                expr,
            ));
        }
    }
    out
}
