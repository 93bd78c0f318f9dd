//! `run`: a learner from its [`LearnConfig`], started in order so that a crash at any point
//! is recoverable:
//!
//! 1. read and check the served model, build the trainer;
//! 2. open the checkpoint directory, increment the epoch and make it durable (fsync, rename)
//!    before anything is published; restore the checkpoint `LATEST` names (trainer state and
//!    source positions), read the publish journal;
//! 3. start the sink and republish, under the new epoch, the restored values (or tombstones)
//!    of every key the journal names;
//! 4. serve `/metrics` and the rows endpoint, report readiness;
//! 5. run the loop ([`crate::learner`]) on a thread of its own until the source ends or
//!    `shutdown` resolves, then learn, publish, flush and checkpoint once more.
//!
//! Without `checkpoint.dir` nothing is restored or journaled and the epoch is the start time
//! in ms (still a new delta source at every start).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::registry::Registry;

use crate::checkpoint::CheckpointDir;
use crate::config::LearnConfig;
use crate::error::{Error, Result};
use crate::feed::{Feed, SourceFeed};
use crate::journal::{Journal, JournalKeys};
use crate::learner::{now_ms, Learner};
use crate::metrics::LearnMetrics;
use crate::publish::{PublishPolicy, Publisher};
use crate::rows::{RowsService, SharedTrainer};
use crate::sink::admin::{AdminSink, AdminSinkConfig};
use crate::sink::{NullSink, Sink};
use crate::snapshot::Snapshots;
use crate::trainer::Trainer;
use crate::trainers::AnyTrainer;

pub use crate::learner::Summary;

/// What `run` reports once it is ready.
#[derive(Clone, Debug)]
pub struct Ready {
    /// Where `/metrics` and the rows endpoint listen.
    pub metrics_addr: Option<SocketAddr>,
    /// This run's epoch.
    pub epoch: u64,
    /// The delta source, `<name>@<epoch>`.
    pub source: String,
}

/// A callback given the run's [`Ready`] report.
pub type OnReady = Box<dyn FnOnce(&Ready) + Send>;

/// Settings of a run that are not in `learn.toml`.
#[derive(Default)]
pub struct RunOptions {
    /// The token the rows endpoint requires (`Authorization: Bearer`), when set.
    pub admin_token: Option<String>,
    /// Called once the epoch is durable, the journal republished and the metrics port bound.
    pub on_ready: Option<OnReady>,
    /// A registry whose metrics `/metrics` serves along with `kiln_learn_*` (the process
    /// metrics the binary registers); a fresh one when `None`.
    pub registry: Option<Registry>,
}

/// Runs the learner of `config` until its source ends or `shutdown` resolves.
pub async fn run(
    config: LearnConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary> {
    let model = config.model()?;
    let metrics = Arc::new(LearnMetrics::default());
    let mut registry = options.registry.unwrap_or_default();
    metrics.register(&mut registry);
    let dims: HashMap<String, usize> = model
        .spec
        .tables
        .iter()
        .zip(&model.table_dims)
        .map(|(t, d)| (t.name.clone(), *d))
        .collect();
    let mut trainer = AnyTrainer::build(&config, &model)?;

    let checkpoints = match &config.checkpoint.dir {
        Some(d) => Some(CheckpointDir::open(d)?),
        None => None,
    };
    let (epoch, restored, number, samples_before, keys, journal) = match &checkpoints {
        Some(c) => {
            let epoch = c.next_epoch()?;
            let (restored, number, samples) = match c.latest()? {
                Some((dir, state)) => {
                    if state.model != model.name {
                        return Err(Error::Checkpoint {
                            path: dir,
                            reason: format!(
                                "written for model '{}', this learner trains '{}'",
                                state.model, model.name
                            ),
                        });
                    }
                    trainer.load(&dir.join("trainer"))?;
                    tracing::info!(path = %dir.display(), samples = state.samples, "checkpoint restored");
                    (state.partitions, state.number, state.samples)
                }
                None => (Default::default(), 0, 0),
            };
            let keys = Journal::recover(&c.journal_path())?;
            let journal = Journal::create(&c.journal_path(), 1, &keys)?;
            (epoch, restored, number, samples, keys, journal)
        }
        None => (
            now_ms(),
            Default::default(),
            0,
            0,
            JournalKeys::new(),
            Journal::disabled(),
        ),
    };

    let runtime = tokio::runtime::Handle::current();
    let sink = sink(&config, &model.name, metrics.clone(), &runtime)?;
    let policy = PublishPolicy {
        interval: Duration::from_millis(config.publish.interval_ms),
        max_rows: config.publish.max_rows,
    };
    let mut publisher = Publisher::new(
        &config.name,
        epoch,
        dims.clone(),
        policy,
        journal,
        sink,
        metrics.clone(),
    );
    if !keys.is_empty() {
        publisher.republish(&trainer, &keys, now_ms())?;
    }
    let snapshots = match (&config.publish.snapshot_dir, &config.publish.kafka) {
        (Some(dir), Some(k)) => Some(Snapshots::open(
            dir,
            &model.name,
            &format!("{}{}", k.topic_prefix, model.name),
            dims.clone(),
        )?),
        (Some(_), None) => {
            tracing::warn!("publish.snapshot_dir is for Kafka delta topics; no snapshots without publish.kafka");
            None
        }
        _ => None,
    };

    let trainer = Arc::new(Mutex::new(trainer));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match config.metrics.addr {
        Some(addr) => {
            let shared: SharedTrainer = trainer.clone();
            let service = RowsService {
                model: model.name.clone(),
                trainer: shared,
                dims,
                registry: Arc::new(registry),
                token: options.admin_token.clone(),
            };
            let mut rx = stop_rx.clone();
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            Some(crate::rows::serve(addr, service, stopped).await?.0)
        }
        None => None,
    };

    let feed = feed(&config, &runtime)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: learning what is joined, publishing, checkpointing");
        stop2.store(true, Ordering::SeqCst);
    });
    let ready = Ready {
        metrics_addr,
        epoch,
        source: publisher.source().to_string(),
    };
    tracing::info!(model = %model.name, source = %ready.source, metrics = ?metrics_addr, "kiln learn ready");
    if let Some(f) = options.on_ready {
        f(&ready);
    }
    let learner = Learner {
        config,
        model,
        trainer,
        feed,
        publisher,
        checkpoints,
        restored,
        checkpoint_number: number,
        epoch,
        snapshots,
        metrics,
        stop,
        samples_before,
        pending_batch: None,
        last_log: std::time::Instant::now(),
        last_dense: None,
    };
    let result = tokio::task::spawn_blocking(move || learner.run())
        .await
        .map_err(|e| Error::Publish {
            sink: "learner".into(),
            reason: format!("the learner thread failed: {e}"),
        })?;
    let _ = stop_tx.send(true);
    result
}

fn sink(
    config: &LearnConfig,
    model: &str,
    metrics: Arc<LearnMetrics>,
    runtime: &tokio::runtime::Handle,
) -> Result<Box<dyn Sink>> {
    let p = &config.publish;
    match (&p.kafka, p.endpoints.is_empty()) {
        (Some(_), false) => Err(Error::config(
            config.file.clone(),
            "publish",
            "give publish.kafka or publish.endpoints, not both",
        )),
        (Some(k), true) => kafka_sink(k, model, metrics, config, runtime),
        (None, false) => Ok(Box::new(AdminSink::start(
            AdminSinkConfig {
                endpoints: p.endpoints.clone(),
                model: model.to_string(),
                max_queued: 1024,
                request_timeout: Duration::from_secs(10),
                max_backoff: Duration::from_secs(5),
            },
            metrics,
            runtime,
        )?)),
        (None, true) => {
            tracing::warn!("no publish.kafka and no publish.endpoints: deltas go nowhere");
            Ok(Box::new(NullSink::default()))
        }
    }
}

#[cfg(feature = "kafka")]
fn kafka_sink(
    k: &crate::config::PublishKafkaConfig,
    model: &str,
    metrics: Arc<LearnMetrics>,
    _config: &LearnConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<Box<dyn Sink>> {
    Ok(Box::new(crate::sink::topic::TopicSink::start(
        k, model, metrics, runtime,
    )?))
}

#[cfg(not(feature = "kafka"))]
fn kafka_sink(
    _k: &crate::config::PublishKafkaConfig,
    _model: &str,
    _metrics: Arc<LearnMetrics>,
    config: &LearnConfig,
    _runtime: &tokio::runtime::Handle,
) -> Result<Box<dyn Sink>> {
    Err(Error::config(
        config.file.clone(),
        "publish.kafka",
        "this build has no Kafka support (the kafka feature)",
    ))
}

fn feed(config: &LearnConfig, runtime: &tokio::runtime::Handle) -> Result<Box<dyn Feed>> {
    let s = &config.sources;
    if let Some(k) = &s.kafka {
        return kafka_feed(k, runtime, config);
    }
    let source = crate::source::jsonl::JsonlSource::open(&s.jsonl, s.follow);
    Ok(Box::new(SourceFeed::new(source, runtime.clone())))
}

#[cfg(feature = "kafka")]
fn kafka_feed(
    k: &crate::config::KafkaSourceConfig,
    runtime: &tokio::runtime::Handle,
    _config: &LearnConfig,
) -> Result<Box<dyn Feed>> {
    Ok(Box::new(crate::feed::KafkaFeed::open(k, runtime.clone())?))
}

#[cfg(not(feature = "kafka"))]
fn kafka_feed(
    _k: &crate::config::KafkaSourceConfig,
    _runtime: &tokio::runtime::Handle,
    config: &LearnConfig,
) -> Result<Box<dyn Feed>> {
    Err(Error::config(
        config.file.clone(),
        "sources.kafka",
        "this build has no Kafka support (the kafka feature)",
    ))
}
