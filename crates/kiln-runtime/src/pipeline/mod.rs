//! Pipelines: a model whose `config.toml` says `backend = "pipeline"` and lists `[[step]]`s,
//! each a served model (through that model's own scheduler, so its dynamic batching merges
//! pipeline and direct callers) or a built-in operation ([`ops`], [`retrieve`]).
//!
//! A pipeline is not a [`kiln_core::Backend`]: a backend's `execute` runs synchronously on a
//! scheduler thread, and a step that waited there on another model's scheduler would hold a
//! worker and could deadlock when steps share models. A pipeline is a kind of
//! [`crate::ServedVersion`] instead, and runs on the async runtime (`exec`).
//!
//! Loading checks the whole graph before the pipeline serves (`graph`): unknown models and
//! tensors, cycles, and dtypes and shapes between steps, each error naming the step.

mod exec;
mod graph;
pub mod ops;
pub mod retrieve;
pub mod spec;

use crate::metrics::{RuntimeMetrics, StepMetrics};
use crate::repository::ModelRepository;
use kiln_core::{Error, ModelConfig, ModelIo, Result, SparseParameters};
use retrieve::{ItemIndex, ItemTables};
use spec::{Step, StepKind};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};

pub use graph::Plan;

/// The model names a pipeline's configuration uses as steps (for load ordering); steps that
/// do not parse are left out (the load reports them).
pub fn member_names(config: &ModelConfig) -> Vec<String> {
    config
        .step
        .iter()
        .filter_map(|t| t.get("model").and_then(|m| m.as_str()).map(str::to_string))
        .collect()
}

/// A loaded pipeline version.
pub struct Pipeline {
    name: String,
    io: ModelIo,
    steps: Vec<Step>,
    plan: Plan,
    /// The item index of each `retrieve` step, by step index.
    items: BTreeMap<usize, Arc<ItemIndex>>,
    /// The same indexes as the version's tables (deltas, rows).
    tables: Option<ItemTables>,
    repo: Weak<ModelRepository>,
    step_metrics: Vec<StepMetrics>,
}

impl Pipeline {
    /// Loads version `version` of pipeline `name` from `dir` (its `retrieve` tables) and checks
    /// its graph against the member models serving now in `repo`.
    pub async fn load(
        repo: Weak<ModelRepository>,
        metrics: &RuntimeMetrics,
        name: &str,
        version: u64,
        dir: &Path,
        config: &ModelConfig,
    ) -> Result<Pipeline> {
        if config.max_batch_size != 0 {
            return Err(Error::invalid(format!(
                "max_batch_size: a pipeline takes whole tensors (its steps batch at their \
                 models); set 0, not {}",
                config.max_batch_size
            )));
        }
        if config.input.is_empty() || config.output.is_empty() {
            return Err(Error::invalid(
                "a pipeline declares its inputs and outputs ([[input]] and [[output]])",
            ));
        }
        let steps = spec::parse_steps(&config.step)?;
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "version directory {} is missing",
                dir.display()
            )));
        }
        // item tables, read off the async runtime; one index per table name
        let wanted: Vec<(usize, String)> = steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.kind {
                StepKind::Retrieve { table, .. } => Some((i, table.clone())),
                _ => None,
            })
            .collect();
        let (dir_owned, model) = (dir.to_path_buf(), name.to_string());
        let items = tokio::task::spawn_blocking(move || {
            let mut by_table: BTreeMap<String, Arc<ItemIndex>> = BTreeMap::new();
            let mut items = BTreeMap::new();
            for (i, table) in wanted {
                let index = match by_table.get(&table) {
                    Some(x) => x.clone(),
                    None => {
                        let x = ItemIndex::load(&dir_owned, &table, &model)?;
                        by_table.insert(table, x.clone());
                        x
                    }
                };
                items.insert(i, index);
            }
            Ok::<_, Error>((items, by_table.into_values().collect::<Vec<_>>()))
        })
        .await
        .map_err(|e| Error::internal(format!("pipeline load task failed: {e}")))?;
        let (items, tables) = items?;
        let strong = repo
            .upgrade()
            .ok_or_else(|| Error::unavailable("the repository is shutting down"))?;
        let plan = graph::check(name, config, &steps, &items, &strong)?;
        let step_metrics = steps
            .iter()
            .map(|s| metrics.for_step(name, version, &s.name))
            .collect();
        Ok(Pipeline {
            name: name.to_string(),
            io: ModelIo {
                inputs: config.input.clone(),
                outputs: config.output.clone(),
            },
            steps,
            plan,
            items,
            tables: (!tables.is_empty()).then_some(ItemTables(tables)),
            repo,
            step_metrics,
        })
    }

    /// Inputs and outputs (full shapes: pipelines do not batch).
    pub fn io(&self) -> &ModelIo {
        &self.io
    }

    /// The steps, in configuration order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The item tables of the `retrieve` steps, if any.
    pub fn sparse(&self) -> Option<&dyn SparseParameters> {
        self.tables.as_ref().map(|t| t as &dyn SparseParameters)
    }

    /// Every serving version of the member models now (a cached answer of the pipeline
    /// depends on all of them).
    pub(crate) fn member_versions(&self) -> Vec<Arc<crate::ServedVersion>> {
        let Some(repo) = self.repo.upgrade() else {
            return Vec::new();
        };
        let members: Vec<&str> = (self.steps.iter())
            .filter_map(|s| match &s.kind {
                StepKind::Model { model, .. } if *model != self.name => Some(model.as_str()),
                _ => None,
            })
            .collect();
        (repo.serving().into_iter())
            .filter(|v| members.contains(&v.name.as_str()))
            .collect()
    }

    /// Why the pipeline cannot serve now (a member model does not), or `None`.
    pub fn failure(&self) -> Option<String> {
        let repo = self.repo.upgrade()?;
        self.steps.iter().find_map(|s| match &s.kind {
            StepKind::Model { model, version } if *model != self.name => {
                repo.get(model, *version).err().map(|e| {
                    format!(
                        "pipeline '{}' step '{}': member {}",
                        self.name, s.name, e.message
                    )
                })
            }
            _ => None,
        })
    }
}
