//! The server side of Kafka delta topics: a [`DeltaSubscriber`] keeps every served model that
//! has embedding tables in step with its delta topic `<prefix><model>`.
//!
//! For each such model (including models loaded later, and again whenever the set of serving
//! versions changes) it restores the latest learner snapshot if a snapshot directory is
//! configured (see [`snapshot`]), then reads every partition of the topic, assigned explicitly
//! (no consumer group, nothing committed: every replica reads every delta), from the snapshot's
//! offsets or from the beginning. Each message (key: the table name; value: a kiln-embed delta)
//! goes through [`ModelRepository::apply_delta`] to every serving version. Messages that cannot
//! be applied (undecodable, no key, unknown or other table, wrong dim, sequence gap on a table
//! that rejects gaps, refused values) are counted by [`Reject`] reason, logged (sampled) and
//! skipped; they never stop the consumer. Replayed deltas are duplicates: counted, not errors.
//! A snapshot that cannot be restored is logged and the topic is read from its beginning.

mod consumer;
mod metrics;
pub mod snapshot;

pub use metrics::{DeltaSourceMetrics, ModelLabels, PartitionLabels, RejectLabels};

use crate::repository::{ModelRepository, VersionState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What went wrong configuring the subscriber or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DeltaSourceError {
    /// The delta-source URL is not `kafka://HOST:PORT[,HOST:PORT...]`.
    #[error("'{url}' is not a delta source: {reason} (expected kafka://HOST:PORT[,HOST:PORT...])")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot file or manifest cannot be read or does not fit the served model.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The repository refused an operation.
    #[error(transparent)]
    Runtime(kiln_core::Error),
}

/// Why a delta-topic message was skipped (the `reason` label of
/// `kiln_delta_source_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a kiln-embed delta (bad magic, checksum, truncated).
    Garbage,
    /// No message key naming the table.
    NoKey,
    /// The key names no table of the model.
    UnknownTable,
    /// The delta names another table than the key.
    WrongTable,
    /// The delta's dim is not the table's.
    WrongDim,
    /// The delta skips sequence numbers and the table rejects gaps.
    Gap,
    /// The table refused it otherwise (non-finite values, keys outside a direct table).
    Refused,
}

impl Reject {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Garbage => "garbage",
            Reject::NoKey => "no_key",
            Reject::UnknownTable => "unknown_table",
            Reject::WrongTable => "wrong_table",
            Reject::WrongDim => "wrong_dim",
            Reject::Gap => "gap",
            Reject::Refused => "refused",
        }
    }
}

/// How the subscriber reaches Kafka and where it finds snapshots.
#[derive(Debug, Clone)]
pub struct DeltaSourceConfig {
    /// `bootstrap.servers`: `HOST:PORT[,HOST:PORT...]`.
    pub brokers: String,
    /// Topic name prefix; a model's topic is `<prefix><model>`.
    pub topic_prefix: String,
    /// Learner snapshots (`<dir>/<model>/LATEST`), if any.
    pub snapshot_dir: Option<PathBuf>,
    /// How often the served models are checked for new or changed ones.
    pub model_poll: Duration,
    /// How often partitions are looked up (a topic that appears or grows) and lag is measured.
    pub lag_interval: Duration,
    /// The longest a consumer's close is waited for at shutdown.
    pub drop_timeout: Duration,
    /// Extra rdkafka consumer settings.
    pub properties: Vec<(String, String)>,
}

/// The default topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "kiln.deltas.";

impl DeltaSourceConfig {
    /// A configuration from a `kafka://HOST:PORT[,HOST:PORT...]` URL with the default prefix,
    /// no snapshots, and default intervals.
    pub fn from_url(url: &str) -> Result<Self, DeltaSourceError> {
        Ok(DeltaSourceConfig {
            brokers: parse_url(url)?,
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_string(),
            snapshot_dir: None,
            model_poll: Duration::from_secs(2),
            lag_interval: Duration::from_secs(2),
            drop_timeout: Duration::from_secs(5),
            properties: Vec::new(),
        })
    }
}

/// The brokers of a `kafka://HOST:PORT[,HOST:PORT...]` URL, as `bootstrap.servers`.
pub fn parse_url(url: &str) -> Result<String, DeltaSourceError> {
    let err = |reason: &str| DeltaSourceError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(err("no scheme"));
    };
    if scheme != "kafka" {
        return Err(err(&format!("unsupported scheme '{scheme}'")));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(err("no broker"));
    }
    for broker in rest.split(',') {
        let Some((host, port)) = broker.rsplit_once(':') else {
            return Err(err(&format!("broker '{broker}' has no port")));
        };
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(err(&format!("broker '{broker}' has no valid host")));
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(err(&format!("broker '{broker}' has no valid port")));
        }
    }
    Ok(rest.to_string())
}

struct Subscription {
    versions: Vec<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The delta-topic subscriber of one server process; see the module docs.
pub struct DeltaSubscriber {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DeltaSubscriber {
    /// Restores snapshots into the models served now and starts their consumers, then returns
    /// with a task that follows the repository (models loaded, changed or unloaded later).
    pub async fn start(
        repo: Arc<ModelRepository>,
        config: DeltaSourceConfig,
        metrics: Arc<DeltaSourceMetrics>,
    ) -> DeltaSubscriber {
        let config = Arc::new(config);
        let (stop, mut stopped) = watch::channel(false);
        let mut subs = BTreeMap::new();
        sync(&repo, &config, &metrics, &mut subs).await;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.model_poll);
            tick.tick().await;
            loop {
                let stop = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => true,
                    _ = tick.tick() => false,
                };
                if stop {
                    break;
                }
                sync(&repo, &config, &metrics, &mut subs).await;
            }
            let all: Vec<_> = std::mem::take(&mut subs).into_values().collect();
            for s in &all {
                let _ = s.stop.send(true);
            }
            for s in all {
                let _ = s.task.await;
            }
        });
        DeltaSubscriber { stop, task }
    }

    /// Stops every consumer and waits for them (each close is bounded by
    /// [`DeltaSourceConfig::drop_timeout`]).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the delta subscriber task failed");
        }
        tracing::info!("delta subscriber stopped");
    }
}

/// The serving versions of every served model that has embedding tables.
fn served(repo: &ModelRepository) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in repo.index() {
        if let (VersionState::Ready, Some(v)) = (e.state, e.version) {
            out.entry(e.name).or_default().push(v);
        }
    }
    out.retain(|m, _| repo.tables(m, None).is_ok_and(|t| !t.is_empty()));
    out.values_mut().for_each(|v| v.sort_unstable());
    out
}

/// Starts consumers for models new or changed since the last call, stops those of models gone.
async fn sync(
    repo: &Arc<ModelRepository>,
    config: &Arc<DeltaSourceConfig>,
    metrics: &Arc<DeltaSourceMetrics>,
    subs: &mut BTreeMap<String, Subscription>,
) {
    let now = served(repo);
    let stale: Vec<String> = subs
        .iter()
        .filter(|(m, s)| now.get(*m) != Some(&s.versions) || s.task.is_finished())
        .map(|(m, _)| m.clone())
        .collect();
    for model in stale {
        let s = subs.remove(&model).expect("listed");
        let _ = s.stop.send(true);
        let _ = s.task.await;
    }
    for (model, versions) in now {
        if subs.contains_key(&model) {
            continue;
        }
        let offsets = restore(repo, config, metrics, &model).await;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(consumer::run(
            repo.clone(),
            config.clone(),
            metrics.clone(),
            model.clone(),
            offsets,
            stopped,
        ));
        subs.insert(
            model,
            Subscription {
                versions,
                stop,
                task,
            },
        );
    }
}

/// Restores the model's latest snapshot; returns the offsets to read the topic from (empty:
/// from the beginning, also when there is no snapshot or it cannot be restored).
async fn restore(
    repo: &Arc<ModelRepository>,
    config: &DeltaSourceConfig,
    metrics: &DeltaSourceMetrics,
    model: &str,
) -> BTreeMap<i32, i64> {
    let Some(dir) = config.snapshot_dir.clone() else {
        return BTreeMap::new();
    };
    let topic = format!("{}{model}", config.topic_prefix);
    let (r, m) = (repo.clone(), model.to_string());
    let done = tokio::task::spawn_blocking(move || {
        let Some(latest) = snapshot::latest(&dir, &m, &topic)? else {
            return Ok(None);
        };
        let rows = snapshot::restore(&r, &m, &latest)?;
        Ok::<_, DeltaSourceError>(Some((latest, rows)))
    })
    .await;
    match done {
        Ok(Ok(Some((latest, rows)))) => {
            metrics.restored_rows(model, rows);
            tracing::info!(model, snapshot = %latest.dir.display(), rows, offsets = ?latest.offsets,
                "restored the latest snapshot; reading the delta topic from its offsets");
            latest.offsets
        }
        Ok(Ok(None)) => {
            tracing::info!(
                model,
                "no snapshot; reading the delta topic from its beginning"
            );
            BTreeMap::new()
        }
        Ok(Err(e)) => {
            tracing::error!(model, error = %e, "cannot restore the snapshot; reading the delta topic from its beginning");
            BTreeMap::new()
        }
        Err(e) => {
            tracing::error!(model, error = %e, "snapshot restore failed; reading the delta topic from its beginning");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_what_is_wrong() {
        assert_eq!(parse_url("kafka://a:9092").unwrap(), "a:9092");
        assert_eq!(parse_url("kafka://a:1,b:2/").unwrap(), "a:1,b:2");
        for (url, why) in [
            ("http://a:9092", "unsupported scheme 'http'"),
            ("a:9092", "no scheme"),
            ("kafka://", "no broker"),
            ("kafka://a", "has no port"),
            ("kafka://a:x", "no valid port"),
            ("kafka://:9092", "no valid host"),
        ] {
            let e = parse_url(url).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
    }
}
