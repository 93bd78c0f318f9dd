//! `kiln learn`: flags over `learn.toml`.

use anyhow::Context;
use clap::Args;
use kiln_learn::config::{EndpointConfig, LearnConfig, PublishKafkaConfig};
use kiln_learn::run::{Ready, RunOptions};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `kiln learn`. Each one overrides its `learn.toml` field and can also be set by its
/// `KILN_LEARN_` environment variable.
#[derive(Args, Debug, Default)]
pub struct LearnArgs {
    /// The learner's configuration (`learn.toml`).
    #[arg(long, env = "KILN_LEARN_CONFIG")]
    config: PathBuf,
    /// The learner's name (`name`): deltas come from `<name>@<epoch>`.
    #[arg(long, env = "KILN_LEARN_NAME")]
    name: Option<String>,
    /// The served model's directory (`model_dir`).
    #[arg(long, env = "KILN_LEARN_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// JSONL event files read in turn, `-` for stdin (`sources.jsonl`; repeatable).
    #[arg(long, env = "KILN_LEARN_JSONL", value_delimiter = ',')]
    jsonl: Vec<String>,
    /// Wait at the end of the last JSONL file for more lines (`sources.follow`).
    #[arg(long, env = "KILN_LEARN_FOLLOW")]
    follow: Option<bool>,
    /// Kafka brokers of the event topics (`sources.kafka.brokers`).
    #[arg(long, env = "KILN_LEARN_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka consumer group (`sources.kafka.group_id`).
    #[arg(long, env = "KILN_LEARN_GROUP_ID")]
    group_id: Option<String>,
    /// Publish at least this often while rows change, ms (`publish.interval_ms`).
    #[arg(long, env = "KILN_LEARN_PUBLISH_INTERVAL_MS")]
    publish_interval_ms: Option<u64>,
    /// Publish once this many rows are touched (`publish.max_rows`).
    #[arg(long, env = "KILN_LEARN_PUBLISH_MAX_ROWS")]
    publish_max_rows: Option<usize>,
    /// Serving endpoints' delta admin API, `http://host:port` (`publish.endpoints`; replaces
    /// the file's list; repeatable).
    #[arg(long = "endpoint", env = "KILN_LEARN_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The servers' admin token, for endpoints given without one; the learner's rows endpoint
    /// then requires it too.
    #[arg(long, env = "KILN_LEARN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Kafka brokers of the delta topics (`publish.kafka.brokers`).
    #[arg(long, env = "KILN_LEARN_DELTA_BROKERS")]
    delta_brokers: Option<String>,
    /// Delta topic prefix (`publish.kafka.topic_prefix`).
    #[arg(long, env = "KILN_LEARN_DELTA_TOPIC_PREFIX")]
    delta_topic_prefix: Option<String>,
    /// Where snapshots for late replicas go (`publish.snapshot_dir`).
    #[arg(long, env = "KILN_LEARN_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Seconds between snapshots (`publish.snapshot_interval_s`).
    #[arg(long, env = "KILN_LEARN_SNAPSHOT_INTERVAL_S")]
    snapshot_interval_s: Option<u64>,
    /// Seconds between dense-weight versions (`publish.dense_version_interval_s`).
    #[arg(long, env = "KILN_LEARN_DENSE_VERSION_INTERVAL_S")]
    dense_version_interval_s: Option<u64>,
    /// The model repository dense versions go to (`publish.model_repository_dir`).
    #[arg(long, env = "KILN_LEARN_MODEL_REPOSITORY_DIR")]
    model_repository_dir: Option<PathBuf>,
    /// Checkpoint directory (`checkpoint.dir`).
    #[arg(long, env = "KILN_LEARN_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Seconds between checkpoints (`checkpoint.interval_s`).
    #[arg(long, env = "KILN_LEARN_CHECKPOINT_INTERVAL_S")]
    checkpoint_interval_s: Option<u64>,
    /// Address of `/metrics` and the rows endpoint (`metrics.addr`; port 0 picks one).
    #[arg(long, env = "KILN_LEARN_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Once the epoch is durable and the metrics port listens, write
    /// `{"metrics_port":..,"epoch":..,"source":".."}` to this file.
    #[arg(long, env = "KILN_LEARN_READY_FILE")]
    ready_file: Option<PathBuf>,
}

impl LearnArgs {
    /// `learn.toml` with the flags applied, checked.
    fn config(&self) -> anyhow::Result<LearnConfig> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("--config {}", self.config.display()))?;
        let mut c = LearnConfig::parse(&text, &self.config.display().to_string())?;
        self.apply(&mut c);
        c.check()?;
        Ok(c)
    }

    fn apply(&self, c: &mut LearnConfig) {
        fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *field = v.clone();
            }
        }
        set(&mut c.name, &self.name);
        set(&mut c.model_dir, &self.model_dir);
        if !self.jsonl.is_empty() {
            c.sources.jsonl = self.jsonl.clone();
        }
        set(&mut c.sources.follow, &self.follow);
        if let Some(k) = c.sources.kafka.as_mut() {
            set(&mut k.brokers, &self.kafka_brokers);
            set(&mut k.group_id, &self.group_id);
        }
        set(&mut c.publish.interval_ms, &self.publish_interval_ms);
        set(&mut c.publish.max_rows, &self.publish_max_rows);
        if !self.endpoints.is_empty() {
            c.publish.endpoints = self
                .endpoints
                .iter()
                .map(|url| EndpointConfig {
                    url: url.clone(),
                    token: None,
                })
                .collect();
        }
        if let Some(t) = self.admin_token.as_ref().filter(|t| !t.is_empty()) {
            for e in c.publish.endpoints.iter_mut().filter(|e| e.token.is_none()) {
                e.token = Some(t.clone());
            }
        }
        if let Some(b) = &self.delta_brokers {
            let k = c.publish.kafka.get_or_insert_with(|| PublishKafkaConfig {
                brokers: String::new(),
                topic_prefix: kiln_learn::config::DEFAULT_TOPIC_PREFIX.into(),
                properties: Default::default(),
            });
            k.brokers = b.clone();
        }
        if let (Some(k), Some(p)) = (c.publish.kafka.as_mut(), &self.delta_topic_prefix) {
            k.topic_prefix = p.clone();
        }
        if self.snapshot_dir.is_some() {
            c.publish.snapshot_dir = self.snapshot_dir.clone();
        }
        set(
            &mut c.publish.snapshot_interval_s,
            &self.snapshot_interval_s,
        );
        if self.dense_version_interval_s.is_some() {
            c.publish.dense_version_interval_s = self.dense_version_interval_s;
        }
        if self.model_repository_dir.is_some() {
            c.publish.model_repository_dir = self.model_repository_dir.clone();
        }
        if self.checkpoint_dir.is_some() {
            c.checkpoint.dir = self.checkpoint_dir.clone();
        }
        set(&mut c.checkpoint.interval_s, &self.checkpoint_interval_s);
        if self.metrics_addr.is_some() {
            c.metrics.addr = self.metrics_addr;
        }
    }
}

/// Runs the learner until its sources end or SIGTERM / SIGINT, checkpointing on the way out.
pub fn run(args: LearnArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let ready_file = args.ready_file.clone();
    let mut registry = prometheus_client::registry::Registry::default();
    crate::process_metrics::ProcessCollector::register(&mut registry);
    let options = RunOptions {
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
        registry: Some(registry),
        on_ready: Some(Box::new(move |r: &Ready| {
            if let Some(path) = &ready_file {
                let body = serde_json::json!({
                    "metrics_port": r.metrics_addr.map(|a| a.port()),
                    "epoch": r.epoch,
                    "source": r.source,
                });
                let tmp = path.with_extension("tmp");
                if let Err(e) = std::fs::write(&tmp, format!("{body}\n"))
                    .and_then(|_| std::fs::rename(&tmp, path))
                {
                    tracing::error!(path = %path.display(), error = %e, "cannot write --ready-file");
                }
            }
        })),
    };
    let summary = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-learn-io")
        .worker_threads(2)
        .build()
        .context("cannot start the async runtime")?
        .block_on(kiln_learn::run::run(
            config,
            options,
            crate::signal::shutdown_signal(),
        ))?;
    tracing::info!(
        samples = summary.samples,
        epoch = summary.epoch,
        "kiln learn stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            learn: LearnArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "kiln",
            "--config",
            "learn.toml",
            "--endpoint",
            "http://a:1,http://b:2",
            "--admin-token",
            "s3cret",
            "--publish-interval-ms",
            "50",
            "--checkpoint-dir",
            "/tmp/ck",
        ])
        .expect("flags parse");
        let mut c = LearnConfig::parse(
            "name = \"l\"\nmodel_dir = \"m\"\n[sources]\njsonl = [\"-\"]\n",
            "learn.toml",
        )
        .expect("parses");
        cli.learn.apply(&mut c);
        assert_eq!(c.publish.endpoints.len(), 2);
        assert_eq!(c.publish.endpoints[1].token.as_deref(), Some("s3cret"));
        assert_eq!(c.publish.interval_ms, 50);
        assert_eq!(c.checkpoint.dir, Some(PathBuf::from("/tmp/ck")));
    }
}
