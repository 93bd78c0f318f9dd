//! The `[parameters]` of a recsys model's `config.toml`: features, tables, interaction, output.
//!
//! ```toml
//! backend = "recsys"
//! default_model_filename = "model.safetensors"
//! max_batch_size = 4096
//!
//! [parameters]
//! interaction = "concat"          # or "dot" (DLRM pairwise dot products)
//! output = "prob"                 # output tensor name
//! output_activation = "sigmoid"   # or "none"
//! dense_input = "dense"           # FP32 [N, D]; D is the bottom MLP's input width
//! precision = "fp32"              # MLP arithmetic: "fp32" (default), "bf16" or "auto" (bf16
//!                                 # where the CPU has AVX512_BF16 / AMX); see crate::dense
//!
//! [[parameters.sparse]]
//! name = "sparse_0"               # INT64 [N, max_ids] input, -1 = padding
//! table = "emb.0"                 # rows from tensor "emb.0.weight" (row r = id r)
//! max_ids = 20
//! pooling = "sum"                 # "sum", "mean", or "concat" with concat_k
//! hash = "none"                   # "none": ids are keys; "xxh3": raw ids/strings hashed
//! # buckets = 1000000             # optional: key = hash % buckets
//! # data_type = "BYTES"           # string ids (empty string = padding), needs hash = "xxh3"
//! # input = "ragged"              # sparse_0_values INT64 [L] + sparse_0_lengths INT32 [N]
//!
//! [[parameters.sparse]]
//! name = "user_x_genres"          # a crossed feature: no input tensor of its own
//! cross = ["user", "genres"]      # 2 to 8 other (not crossed) sparse features of the model
//! table = "emb.cross"
//! buckets = 1000000               # optional: the cross's key % buckets
//! # part, pooling as for any feature; max_ids is the product of the components' max_ids
//!
//! [parameters.table_defaults]     # for every table; [parameters.tables."emb.0"] overrides
//! storage = "f32"                 # or "f16"
//! default_row = "zeros"           # or "hash" (deterministic hash-seeded init, hash_scale)
//! # memory_cap_mb = 4096, ttl_s = 86400, shards = 64, gap_policy = "reject" | "apply"
//! # allow_non_finite = false      # true: deltas may write NaN / infinite values
//! # layout = "hashed"            # any u64 key, deltas may add rows; "direct": ids are row
//! #                               # numbers 0..rows (bucketized), no hash probe, deltas
//! #                               # writing other keys are refused
//! ```
//!
//! A feature with `part = "wide"` (default `"deep"`) is a logistic-regression term: its table
//! has dim 1 and `pooling = "sum"`, and its pooled weight adds to the logit, as does the
//! optional tensor `wide.bias` `[1]`. With deep features too the model is Wide & Deep: logit =
//! top MLP output (one output) + wide sum + `wide.bias`, then the activation. A model whose
//! features are all wide is wide-only, `p = activation(wide.bias + wide sum)` `[N, 1]`: it has
//! no deep part, hence no dense input (its inputs are the sparse features alone), and refuses
//! `interaction`, `dense_input` and `bottom.*` / `top.*` tensors, naming the one it got.
//!
//! A feature with `cross` is the cross of the listed features (TF's `crossed_column`): its
//! keys are every combination of one key of each component in a row, hashed together
//! (`crate::features::cross_keys`, the one definition serving and learners share). It takes
//! no input (the model's inputs are the other features'), has no `hash`, `data_type`,
//! `input` or `max_ids` of its own, and may not cross itself, another cross, or a feature
//! that is not in the model.

use crate::dense::Precision;
use kiln_core::{DataType, Error, Result};
use kiln_embed::{DefaultRow, GapPolicy, Pooling, StorageType, TableConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

mod cross;
use cross::resolve_cross;

/// How pooled vectors and the bottom MLP's output are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interaction {
    /// `[bottom, pooled_0, ..., pooled_{T-1}]` side by side.
    Concat,
    /// `[bottom, v_a . v_b for a in 1..=T, b in 0..a]` with `v_0 = bottom` (DLRM).
    Dot,
}

/// The activation applied to the top MLP's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `1 / (1 + e^-x)`.
    #[default]
    Sigmoid,
    /// The raw logits.
    None,
}

/// How a feature's raw ids become table keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Hashing {
    /// INT64 ids are the keys.
    #[default]
    None,
    /// xxh3-64 of the id's 8 little-endian bytes (INT64) or of the string (BYTES).
    Xxh3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum PoolingName {
    #[default]
    Sum,
    Mean,
    Concat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSparse {
    name: String,
    table: String,
    #[serde(default)]
    max_ids: Option<usize>,
    #[serde(default)]
    pooling: PoolingName,
    #[serde(default)]
    concat_k: Option<usize>,
    #[serde(default)]
    hash: Option<Hashing>,
    #[serde(default)]
    buckets: Option<u64>,
    #[serde(default)]
    data_type: Option<String>,
    #[serde(default)]
    input: Option<InputForm>,
    #[serde(default)]
    part: Part,
    #[serde(default)]
    cross: Option<Vec<String>>,
}

/// Which part of the model a sparse feature feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Pooled rows go through the interaction and the top MLP (DLRM).
    #[default]
    Deep,
    /// A dim-1 table whose pooled (summed) weight adds straight to the logit (logistic
    /// regression, the wide part of Wide & Deep).
    Wide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum InputForm {
    #[default]
    Padded,
    Ragged,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTable {
    storage: Option<String>,
    default_row: Option<String>,
    hash_scale: Option<f32>,
    hash_seed: Option<u64>,
    memory_cap_mb: Option<u64>,
    ttl_s: Option<u64>,
    shards: Option<usize>,
    gap_policy: Option<String>,
    layout: Option<String>,
    allow_non_finite: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    #[serde(default)]
    interaction: Option<Interaction>,
    #[serde(default = "default_output")]
    output: String,
    #[serde(default)]
    output_activation: Activation,
    #[serde(default)]
    dense_input: Option<String>,
    #[serde(default)]
    precision: Option<String>,
    #[serde(default)]
    sparse: Vec<RawSparse>,
    #[serde(default)]
    table_defaults: RawTable,
    #[serde(default)]
    tables: BTreeMap<String, RawTable>,
}

fn default_output() -> String {
    "prob".into()
}

/// One sparse feature.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseFeature {
    /// Input tensor name.
    pub name: String,
    /// Table (index into [`RecsysSpec::tables`]).
    pub table: usize,
    /// Ids per row (the input's second dimension).
    pub max_ids: usize,
    /// Pooling of the ids' rows.
    pub pooling: Pooling,
    /// Raw id to key.
    pub hash: Hashing,
    /// Key space size after hashing, if bounded.
    pub buckets: Option<u64>,
    /// `INT64` or `BYTES`.
    pub data_type: DataType,
    /// Values + lengths inputs (`<name>_values` INT64 ragged, `<name>_lengths` INT32 `[N]`)
    /// instead of one padded `[N, max_ids]` input.
    pub ragged: bool,
    /// The deep part (interaction, top MLP) or the wide part (added to the logit).
    pub part: Part,
    /// For a crossed feature, its components (indices into [`RecsysSpec::sparse`], in the
    /// order of `cross`); empty for a feature read from its own input. A cross has
    /// `hash = None`, INT64 keys, no ragged input, and `max_ids` the product of its
    /// components' `max_ids`.
    pub cross: Vec<usize>,
}

impl SparseFeature {
    /// Whether the feature is a cross of other features (it has no input tensor).
    pub fn is_cross(&self) -> bool {
        !self.cross.is_empty()
    }
}

/// The most keys one row of a crossed feature may have (the product of its components'
/// `max_ids`).
pub const MAX_CROSS_IDS: usize = 4096;

/// How a table's rows are addressed (see `kiln_embed::TableConfig::key_space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Key `k` is row `k` of the weights; keys outside `0..rows` are misses and deltas
    /// writing them are refused.
    Direct,
    /// Any u64 key, through a hash index; deltas may add rows.
    Hashed,
}

/// A table's name and store settings.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Name in the config and the weights (`<name>.weight`).
    pub name: String,
    /// Store settings except name and dim (filled in from the weights).
    pub config: TableConfig,
    /// Row addressing.
    pub layout: Layout,
}

/// A parsed recsys model definition.
#[derive(Debug, Clone)]
pub struct RecsysSpec {
    /// Interaction of the deep features' pooled vectors and the bottom MLP's output
    /// (`Concat`, unused, for a wide-only model).
    pub interaction: Interaction,
    /// Output tensor name.
    pub output: String,
    /// Output activation.
    pub activation: Activation,
    /// Dense input name (default `"dense"`); `None` for a wide-only model, which has no dense
    /// input.
    pub dense_input: Option<String>,
    /// Sparse features, in input order (after the dense input).
    pub sparse: Vec<SparseFeature>,
    /// Tables in order of first use.
    pub tables: Vec<TableSpec>,
    /// The MLPs' arithmetic (`precision`, default fp32).
    pub precision: Precision,
}

fn bad(m: impl std::fmt::Display) -> Error {
    Error::invalid(format!("recsys parameters: {m}"))
}

impl RecsysSpec {
    /// Reads the `[parameters]` table of a model config.
    pub fn parse(params: &toml::Table) -> Result<Self> {
        let raw: RawParams = toml::Value::Table(params.clone())
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message()))?;
        if raw.sparse.is_empty() {
            return Err(bad("at least one [[parameters.sparse]] feature is needed"));
        }
        let wide_only = raw.sparse.iter().all(|s| s.part == Part::Wide);
        let no_deep = |field: &str| {
            bad(format!("{field}: every sparse feature is part = \"wide\": the model has no deep part (no interaction, no dense input); remove {field}"))
        };
        let interaction = match (raw.interaction, wide_only) {
            (Some(_), true) => return Err(no_deep("interaction")),
            (None, false) => {
                return Err(bad(
                    "interaction: missing (\"concat\" or \"dot\", for the deep features)",
                ))
            }
            (i, _) => i.unwrap_or(Interaction::Concat),
        };
        if raw.precision.is_some() && wide_only {
            return Err(no_deep("precision"));
        }
        let precision = match raw.precision.as_deref() {
            None | Some("fp32") => Precision::Fp32,
            Some("bf16") => Precision::Bf16,
            Some("auto") => Precision::Auto,
            Some(o) => {
                return Err(bad(format!(
                    "precision must be \"fp32\", \"bf16\" or \"auto\", got \"{o}\""
                )))
            }
        };
        let dense_input = match (raw.dense_input, wide_only) {
            (Some(_), true) => return Err(no_deep("dense_input")),
            (d, wide_only) => (!wide_only).then(|| d.unwrap_or_else(|| "dense".into())),
        };
        if dense_input.as_ref() == Some(&raw.output) {
            return Err(bad("dense_input and output must have different names"));
        }
        let mut names = std::collections::HashSet::new();
        names.insert(raw.output.clone());
        names.extend(dense_input.clone());
        for t in raw.tables.keys() {
            if !raw.sparse.iter().any(|s| &s.table == t) {
                return Err(bad(format!(
                    "tables.\"{t}\" is not the table of any sparse feature"
                )));
            }
        }
        let mut tables: Vec<TableSpec> = Vec::new();
        let mut sparse = Vec::new();
        let mut crosses: Vec<(usize, Vec<String>)> = Vec::new();
        for s in raw.sparse {
            let ctx = |m: String| bad(format!("sparse feature '{}': {m}", s.name));
            if !names.insert(s.name.clone()) {
                return Err(ctx("the name is used twice".into()));
            }
            if let Some(cross) = &s.cross {
                let own = [
                    ("max_ids", s.max_ids.is_some()),
                    ("hash", s.hash.is_some()),
                    ("data_type", s.data_type.is_some()),
                    ("input", s.input.is_some()),
                ];
                if let Some((field, _)) = own.iter().find(|(_, given)| *given) {
                    return Err(ctx(format!(
                        "{field}: a cross has no {field} of its own (its keys come from the features it crosses; max_ids is the product of theirs)"
                    )));
                }
                crosses.push((sparse.len(), cross.clone()));
            }
            let max_ids = match (s.max_ids, &s.cross) {
                (Some(0), _) => return Err(ctx("max_ids must be at least 1".into())),
                (Some(m), _) => m,
                // filled in from the components below
                (None, Some(_)) => 1,
                (None, None) => return Err(ctx("max_ids: missing".into())),
            };
            let hash = s.hash.unwrap_or_default();
            let pooling = match (s.pooling, s.concat_k) {
                (PoolingName::Sum, None) => Pooling::Sum,
                (PoolingName::Mean, None) => Pooling::Mean,
                (PoolingName::Concat, Some(k)) if k >= 1 => Pooling::Concat { k },
                (PoolingName::Concat, _) => {
                    return Err(ctx("pooling = \"concat\" needs concat_k >= 1".into()))
                }
                (_, Some(_)) => {
                    return Err(ctx("concat_k is only for pooling = \"concat\"".into()))
                }
            };
            if s.part == Part::Wide && pooling != Pooling::Sum {
                return Err(ctx(
                    "part = \"wide\" needs pooling = \"sum\" (its weights add to the logit)".into(),
                ));
            }
            let data_type = match s.data_type.as_deref() {
                None | Some("INT64") | Some("TYPE_INT64") => DataType::Int64,
                Some("BYTES") | Some("TYPE_STRING") => DataType::Bytes,
                Some(o) => return Err(ctx(format!("data_type must be INT64 or BYTES, got {o}"))),
            };
            if data_type == DataType::Bytes && hash != Hashing::Xxh3 {
                return Err(ctx("BYTES ids need hash = \"xxh3\"".into()));
            }
            let ragged = s.input == Some(InputForm::Ragged);
            if ragged && data_type == DataType::Bytes {
                return Err(ctx("input = \"ragged\" takes INT64 ids only".into()));
            }
            if s.buckets == Some(0) {
                return Err(ctx("buckets must be at least 1".into()));
            }
            let table = match tables.iter().position(|t| t.name == s.table) {
                Some(i) => i,
                None => {
                    let over = raw.tables.get(&s.table).cloned().unwrap_or_default();
                    let (config, layout) = table_config(&s.table, &raw.table_defaults, &over)?;
                    tables.push(TableSpec {
                        name: s.table.clone(),
                        config,
                        layout,
                    });
                    tables.len() - 1
                }
            };
            sparse.push(SparseFeature {
                name: s.name,
                table,
                max_ids,
                pooling,
                hash,
                buckets: s.buckets,
                data_type,
                ragged,
                part: s.part,
                cross: Vec::new(),
            });
        }
        let mut is_cross = vec![false; sparse.len()];
        for (i, _) in &crosses {
            is_cross[*i] = true;
        }
        for (i, names) in crosses {
            let (cross, max_ids) = resolve_cross(&sparse, &is_cross, i, &names)?;
            sparse[i].cross = cross;
            sparse[i].max_ids = max_ids;
        }
        Ok(RecsysSpec {
            interaction,
            output: raw.output,
            activation: raw.output_activation,
            dense_input,
            sparse,
            tables,
            precision,
        })
    }

    /// Whether every sparse feature is wide (logistic regression: no MLPs, no dense input).
    pub fn is_wide_only(&self) -> bool {
        self.sparse.iter().all(|f| f.part == Part::Wide)
    }
}

fn table_config(name: &str, defaults: &RawTable, over: &RawTable) -> Result<(TableConfig, Layout)> {
    let ctx = |m: String| bad(format!("table '{name}': {m}"));
    let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
    // dim is filled in from the weights; 1 passes validation meanwhile
    let mut c = TableConfig::new(name, 1);
    c.storage = match pick(&over.storage, &defaults.storage).as_deref() {
        None | Some("f32") => StorageType::F32,
        Some("f16") => StorageType::F16,
        Some(o) => return Err(ctx(format!("storage must be f32 or f16, got {o}"))),
    };
    let scale = over.hash_scale.or(defaults.hash_scale).unwrap_or(0.01);
    let seed = over.hash_seed.or(defaults.hash_seed).unwrap_or(0);
    c.default_row = match pick(&over.default_row, &defaults.default_row).as_deref() {
        None | Some("zeros") => DefaultRow::Zeros,
        Some("hash") => DefaultRow::HashInit { seed, scale },
        Some(o) => return Err(ctx(format!("default_row must be zeros or hash, got {o}"))),
    };
    c.gap_policy = match pick(&over.gap_policy, &defaults.gap_policy).as_deref() {
        None | Some("reject") => GapPolicy::Reject,
        Some("apply") => GapPolicy::ApplyAndReport,
        Some(o) => return Err(ctx(format!("gap_policy must be reject or apply, got {o}"))),
    };
    c.allow_non_finite = over
        .allow_non_finite
        .or(defaults.allow_non_finite)
        .unwrap_or(false);
    if let Some(mb) = over.memory_cap_mb.or(defaults.memory_cap_mb) {
        c.memory_cap_bytes = Some(mb << 20);
    }
    if let Some(s) = over.ttl_s.or(defaults.ttl_s) {
        c.ttl = Some(Duration::from_secs(s));
    }
    if let Some(s) = over.shards.or(defaults.shards) {
        c.shards = s;
    }
    let layout = match pick(&over.layout, &defaults.layout).as_deref() {
        None | Some("hashed") => Layout::Hashed,
        Some("direct") => Layout::Direct,
        Some(o) => return Err(ctx(format!("layout must be hashed or direct, got {o}"))),
    };
    if layout == Layout::Direct && c.memory_cap_bytes.is_some() {
        return Err(ctx(
            "memory_cap_mb needs layout = \"hashed\" (a direct table's memory is fixed by its rows)"
                .into(),
        ));
    }
    c.validate().map_err(|e| ctx(e.to_string()))?;
    Ok((c, layout))
}

#[cfg(test)]
mod tests;
