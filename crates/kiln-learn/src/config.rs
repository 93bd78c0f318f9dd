//! The learner's configuration, `learn.toml`, read with `deny_unknown_fields` so that a typo is
//! an error naming the file and the dotted field, then checked against the served model
//! ([`LearnConfig::model`]).
//!
//! ```toml
//! name = "ctr-learner"             # the delta source is "<name>@<epoch>"; [A-Za-z0-9._-]
//! model_dir = "models/ctr_wide"    # a served model: config.toml + <version>/<weights>
//!
//! [sources]                        # exactly one of jsonl and kafka
//! jsonl = ["events.jsonl", "-"]    # files read in turn; "-" is stdin
//! follow = false                   # true: wait at the end of the last file for more lines
//! # [sources.kafka]
//! # brokers = "127.0.0.1:9092"
//! # impressions_topic = "impressions"
//! # actions_topic = "actions"
//! # group_id = "kiln-learn-ctr"
//! # properties = { "session.timeout.ms" = "6000" }   # extra rdkafka settings
//!
//! [features]                       # event field = model sparse input; unlisted inputs read
//! dense = true                     # the event field of their own name; dense: read "dense"
//! user = "user_id"
//!
//! [labels]
//! positive = ["click"]             # other action names are ignored (counted)
//!
//! [join]
//! window_ms = 1800000              # 30 min of event time
//! memory_cap_bytes = 1073741824    # joiner state; at the cap the oldest impressions close
//! orphan_hold_ms = 60000           # an action seen before its impression waits this long
//!
//! [trainer]
//! kind = "ftrl"                    # or "deep"
//! [trainer.ftrl]                   # McMahan et al. 2013, Algorithm 1; with kind = "deep", the
//!                                  # wide part of a Wide & Deep model
//! alpha = 0.1
//! beta = 1.0
//! l1 = 1.0
//! l2 = 1.0
//! [trainer.deep]
//! lr = 0.001                       # the MLPs' learning rate
//! optimizer = "adam"               # or "adagrad"
//! batch_size = 256
//! embedding_optimizer = "adagrad"  # or "ftrl" (then [trainer.ftrl] applies to the rows)
//! embedding_lr = 0.05
//! admission_min_count = 1          # sightings before a key gets a row (1: at once)
//! # ttl_s = 86400                  # rows untouched this long expire (tombstones)
//!
//! [publish]                        # every interval_ms or max_rows touched rows
//! interval_ms = 1000
//! max_rows = 100000
//! # kafka = { brokers = "127.0.0.1:9092", topic_prefix = "kiln.deltas." }
//! # endpoints = [{ url = "http://127.0.0.1:8000", token = "secret" }]
//! # snapshot_dir = "snapshots"     # <dir>/<model>/<n>/ for replicas that start late
//! snapshot_interval_s = 300
//! # dense_version_interval_s = 600 # dense weights as a new model version (off when unset)
//! # model_repository_dir = "models" # where those versions go (default: model_dir's parent)
//!
//! [checkpoint]
//! # dir = "checkpoints"            # none: no checkpoints
//! interval_s = 60
//!
//! [metrics]
//! # addr = "127.0.0.1:9108"        # /metrics and the rows endpoint
//! ```
//!
//! Every field is public and plain so that `kiln learn` flags and `KILN_LEARN_*` variables can
//! override it; call [`LearnConfig::check`] again after overriding.

mod check;
mod model;

pub use model::ModelInfo;

use crate::error::{Error, Result};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole `learn.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnConfig {
    /// The learner's name: the delta source is `<name>@<epoch>`.
    pub name: String,
    /// The served model's directory (its `config.toml` is the feature spec).
    pub model_dir: PathBuf,
    /// Where events come from.
    #[serde(default)]
    pub sources: SourcesConfig,
    /// Event fields to model inputs.
    #[serde(default)]
    pub features: FeaturesConfig,
    /// Which actions are positive.
    #[serde(default)]
    pub labels: LabelsConfig,
    /// The impression-action join.
    #[serde(default)]
    pub join: JoinConfig,
    /// The trainer and its optimizers.
    #[serde(default)]
    pub trainer: TrainerConfig,
    /// Where and how often deltas go.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// The metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The file this was read from (for messages; empty when parsed from text).
    #[serde(skip)]
    pub file: String,
}

/// `[sources]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// JSONL files read in turn; `-` is stdin.
    #[serde(default)]
    pub jsonl: Vec<String>,
    /// Wait at the end of the last file for more lines instead of ending.
    #[serde(default)]
    pub follow: bool,
    /// A Kafka consumer group over an impressions and an actions topic.
    #[serde(default)]
    pub kafka: Option<KafkaSourceConfig>,
}

/// `[sources.kafka]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic of impression events.
    pub impressions_topic: String,
    /// The topic of action events.
    pub actions_topic: String,
    /// The consumer group.
    pub group_id: String,
    /// Extra rdkafka settings, passed as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[features]`: `dense = bool` and `<event field> = "<model sparse input>"` pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturesConfig {
    /// Read the impression's `dense` array (else the model's dense input is zeros).
    pub dense: bool,
    /// Event field to model sparse input name; an input no field names reads the event field
    /// of its own name.
    pub map: BTreeMap<String, String>,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            dense: true,
            map: BTreeMap::new(),
        }
    }
}

impl<'de> Deserialize<'de> for FeaturesConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FeaturesConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`dense = true|false` and `event_field = \"model_input\"` pairs")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = FeaturesConfig::default();
                while let Some(k) = m.next_key::<String>()? {
                    if k == "dense" {
                        out.dense = m.next_value()?;
                    } else {
                        let v: String = m.next_value()?;
                        out.map.insert(k, v);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// `[labels]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// Action names that make an impression positive.
    pub positive: Vec<String>,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        LabelsConfig {
            positive: vec!["click".into()],
        }
    }
}

/// `[join]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// How long (event time) an impression waits for a positive action.
    pub window_ms: u64,
    /// The joiner's memory bound, bytes.
    pub memory_cap_bytes: u64,
    /// How long (event time) a positive action whose impression has not arrived waits for it.
    pub orphan_hold_ms: u64,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            window_ms: 30 * 60 * 1000,
            memory_cap_bytes: 1 << 30,
            orphan_hold_ms: 60_000,
        }
    }
}

/// Which trainer learns the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrainerKind {
    /// Logistic regression with FTRL-Proximal over the model's wide features.
    #[default]
    Ftrl,
    /// DLRM-style backpropagation over the deep (and wide) features.
    Deep,
}

/// `[trainer]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// The trainer.
    #[serde(default)]
    pub kind: TrainerKind,
    /// FTRL-Proximal settings.
    #[serde(default)]
    pub ftrl: FtrlConfig,
    /// Deep trainer settings.
    #[serde(default)]
    pub deep: DeepConfig,
}

/// `[trainer.ftrl]`: per-coordinate learning rate `alpha / (beta + sqrt(n))`, L1 and L2.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtrlConfig {
    /// Learning-rate scale, > 0.
    pub alpha: f64,
    /// Learning-rate smoothing, > 0.
    pub beta: f64,
    /// L1 strength, >= 0.
    pub l1: f64,
    /// L2 strength, >= 0.
    pub l2: f64,
}

impl Default for FtrlConfig {
    fn default() -> Self {
        FtrlConfig {
            alpha: 0.1,
            beta: 1.0,
            l1: 1.0,
            l2: 1.0,
        }
    }
}

/// The MLPs' optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DenseOptimizer {
    /// Adam.
    #[default]
    Adam,
    /// AdaGrad.
    Adagrad,
}

/// The embedding rows' optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingOptimizer {
    /// Sparse AdaGrad.
    #[default]
    Adagrad,
    /// FTRL-Proximal, with `[trainer.ftrl]`.
    Ftrl,
}

/// `[trainer.deep]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeepConfig {
    /// The MLPs' learning rate, > 0.
    pub lr: f32,
    /// The MLPs' optimizer.
    pub optimizer: DenseOptimizer,
    /// Samples per step, >= 1.
    pub batch_size: usize,
    /// The embedding rows' optimizer.
    pub embedding_optimizer: EmbeddingOptimizer,
    /// The embedding rows' learning rate (AdaGrad), > 0.
    pub embedding_lr: f32,
    /// Sightings of a key before it gets a row (0 and 1: at once).
    pub admission_min_count: u32,
    /// Rows untouched this long expire and are published as tombstones.
    pub ttl_s: Option<u64>,
}

impl Default for DeepConfig {
    fn default() -> Self {
        DeepConfig {
            lr: 0.001,
            optimizer: DenseOptimizer::Adam,
            batch_size: 256,
            embedding_optimizer: EmbeddingOptimizer::Adagrad,
            embedding_lr: 0.05,
            admission_min_count: 1,
            ttl_s: None,
        }
    }
}

/// `[publish]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Publish at least this often while rows change, ms.
    pub interval_ms: u64,
    /// Publish once this many rows are touched.
    pub max_rows: usize,
    /// A Kafka delta topic per model.
    pub kafka: Option<PublishKafkaConfig>,
    /// Serving endpoints' delta admin API.
    pub endpoints: Vec<EndpointConfig>,
    /// Where snapshots for late replicas go (none: no snapshots).
    pub snapshot_dir: Option<PathBuf>,
    /// Seconds between snapshots.
    pub snapshot_interval_s: u64,
    /// Seconds between dense-weight versions (none: dense weights are not published).
    pub dense_version_interval_s: Option<u64>,
    /// The model repository the dense versions go to (default: `model_dir`'s parent).
    pub model_repository_dir: Option<PathBuf>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            interval_ms: 1000,
            max_rows: 100_000,
            kafka: None,
            endpoints: Vec::new(),
            snapshot_dir: None,
            snapshot_interval_s: 300,
            dense_version_interval_s: None,
            model_repository_dir: None,
        }
    }
}

/// `[publish.kafka]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishKafkaConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// The delta topic is `<topic_prefix><model>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Extra rdkafka settings, passed as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The delta topics' default prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "kiln.deltas.";

fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.into()
}

/// One serving endpoint (`[[publish.endpoints]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `http://host:port` (HTTP admin API) or `grpc://host:port`.
    pub url: String,
    /// The server's admin token.
    #[serde(default)]
    pub token: Option<String>,
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Where checkpoints go (none: no checkpoints).
    pub dir: Option<PathBuf>,
    /// Seconds between checkpoints.
    pub interval_s: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: None,
            interval_s: 60,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` and the rows endpoint listen (none: not served).
    #[serde(default)]
    pub addr: Option<SocketAddr>,
}

impl LearnConfig {
    /// Reads `path`, then [`check`](Self::check)s it, the served model included.
    pub fn load(path: &Path) -> Result<LearnConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c = Self::parse(&text, &path.display().to_string())?;
        c.check()?;
        Ok(c)
    }

    /// Parses TOML text read from `file` (named in errors); checks nothing beyond the schema.
    pub fn parse(text: &str, file: &str) -> Result<LearnConfig> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let reason = e.message().trim().replace('\n', " ");
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
                .unwrap_or_default();
            Error::config(file, "", format!("{reason}{at}"))
        })?;
        let mut c: LearnConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let mut field = e.path().to_string();
                let reason = e.inner().message().trim().replace('\n', " ");
                // an unknown key is reported at its parent: name the key itself
                if let Some(k) = reason
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    if field == "." {
                        field = k.into();
                    } else if field != k && !field.ends_with(&format!(".{k}")) {
                        field = format!("{field}.{k}");
                    }
                }
                if field == "." {
                    field.clear();
                }
                Error::config(file, field, reason)
            })?;
        c.file = file.to_string();
        Ok(c)
    }

    pub(crate) fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::config(self.file.clone(), field, reason)
    }

    /// Checks the values and the served model; call it again after overriding fields.
    pub fn check(&self) -> Result<()> {
        self.check_values()?;
        self.model().map(|_| ())
    }

    /// Reads the served model and checks the features, labels and trainer against it.
    pub fn model(&self) -> Result<ModelInfo> {
        ModelInfo::open(self)
    }
}
