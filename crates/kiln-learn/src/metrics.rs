//! The learner's `kiln_learn_*` metrics (prometheus-client), served on its metrics port with
//! the rows endpoint ([`crate::rows`]).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label set with one `reason` label (malformed events).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the event was refused.
    pub reason: String,
}

/// A label set with one `partition` label (consumer lag).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// `topic/partition`, or the file name for a JSONL source.
    pub partition: String,
}

/// A label set with one `window` label: `windowed` or `cumulative`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabel {
    /// `windowed` or `cumulative`.
    pub window: String,
}

/// Every `kiln_learn_*` metric.
#[derive(Debug)]
pub struct LearnMetrics {
    /// Samples learned (its rate is samples/s).
    pub samples: Counter,
    /// Samples joined as positives.
    pub positives: Counter,
    /// Samples joined as negatives (window closed, or closed early at the memory cap).
    pub negatives: Counter,
    /// Impressions closed early as negatives because the joiner was at its memory cap.
    pub closed_at_cap: Counter,
    /// Actions that arrived after their impression's window closed.
    pub late_actions: Counter,
    /// Actions whose impression was never seen.
    pub orphan_actions: Counter,
    /// Impressions replayed after a restart and skipped because they were learned before it.
    pub replay_skipped: Counter,
    /// Joiner memory in accounted bytes.
    pub joiner_bytes: Gauge,
    /// Impressions waiting in the joiner.
    pub joiner_open: Gauge,
    /// Events not yet read, per source partition.
    pub consumer_lag: Family<PartitionLabel, Gauge>,
    /// Malformed events skipped, by reason.
    pub malformed: Family<ReasonLabel, Counter>,
    /// Deltas published (one per table per publish).
    pub deltas_published: Counter,
    /// Rows and tombstones published.
    pub rows_published: Counter,
    /// Deltas acknowledged by a destination (each destination counts).
    pub deltas_delivered: Counter,
    /// Failed delivery attempts (each is retried).
    pub sink_failures: Counter,
    /// Deltas merged into others for an endpoint that fell behind.
    pub sink_merged: Counter,
    /// Deltas handed to the sink and not yet acknowledged everywhere.
    pub sink_queued: Gauge,
    /// Seconds from handing a delta to a destination until it acknowledged it.
    pub publish_latency: Histogram,
    /// Seconds from an impression entering the learner until the rows it changed were
    /// published.
    pub event_to_publish: Histogram,
    /// Seconds since the last checkpoint.
    pub checkpoint_age: Gauge<f64, AtomicU64>,
    /// Checkpoints written.
    pub checkpoints: Counter,
    /// The publisher's epoch (the `@<epoch>` of the delta source name).
    pub epoch: Gauge,
    /// Dense-weight versions written to the model repository.
    pub dense_versions: Counter,
    /// Snapshots written for late replicas.
    pub snapshots: Counter,
    /// Progressive-validation AUC.
    pub auc: Family<WindowLabel, Gauge<f64, AtomicU64>>,
    /// Progressive-validation log loss.
    pub logloss: Family<WindowLabel, Gauge<f64, AtomicU64>>,
}

impl Default for LearnMetrics {
    fn default() -> Self {
        LearnMetrics {
            samples: Counter::default(),
            positives: Counter::default(),
            negatives: Counter::default(),
            closed_at_cap: Counter::default(),
            late_actions: Counter::default(),
            orphan_actions: Counter::default(),
            replay_skipped: Counter::default(),
            joiner_bytes: Gauge::default(),
            joiner_open: Gauge::default(),
            consumer_lag: Family::default(),
            malformed: Family::default(),
            deltas_published: Counter::default(),
            rows_published: Counter::default(),
            deltas_delivered: Counter::default(),
            sink_failures: Counter::default(),
            sink_merged: Counter::default(),
            sink_queued: Gauge::default(),
            publish_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            event_to_publish: Histogram::new(exponential_buckets(0.005, 2.0, 20)),
            checkpoint_age: Gauge::default(),
            checkpoints: Counter::default(),
            epoch: Gauge::default(),
            dense_versions: Counter::default(),
            snapshots: Counter::default(),
            auc: Family::default(),
            logloss: Family::default(),
        }
    }
}

impl LearnMetrics {
    /// Registers every metric under the `kiln_learn` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kiln_learn");
        r.register("samples", "Samples learned", self.samples.clone());
        r.register(
            "joined_positives",
            "Samples joined as positives",
            self.positives.clone(),
        );
        r.register(
            "joined_negatives",
            "Samples joined as negatives (window closed or memory cap)",
            self.negatives.clone(),
        );
        r.register(
            "joiner_closed_at_cap",
            "Impressions closed early as negatives at the joiner's memory cap",
            self.closed_at_cap.clone(),
        );
        r.register(
            "late_actions",
            "Actions after their impression's window closed",
            self.late_actions.clone(),
        );
        r.register(
            "orphan_actions",
            "Actions whose impression was never seen",
            self.orphan_actions.clone(),
        );
        r.register(
            "replay_skipped",
            "Impressions replayed after a restart and skipped as already learned",
            self.replay_skipped.clone(),
        );
        r.register(
            "joiner_bytes",
            "Joiner memory in accounted bytes",
            self.joiner_bytes.clone(),
        );
        r.register(
            "joiner_open",
            "Impressions waiting in the joiner",
            self.joiner_open.clone(),
        );
        r.register(
            "consumer_lag",
            "Events not yet read, per source partition",
            self.consumer_lag.clone(),
        );
        r.register(
            "malformed_events",
            "Malformed events skipped, by reason",
            self.malformed.clone(),
        );
        r.register(
            "deltas_published",
            "Deltas published (one per table per publish)",
            self.deltas_published.clone(),
        );
        r.register(
            "rows_published",
            "Rows and tombstones published",
            self.rows_published.clone(),
        );
        r.register(
            "deltas_delivered",
            "Deltas acknowledged by a destination",
            self.deltas_delivered.clone(),
        );
        r.register(
            "sink_failures",
            "Failed delivery attempts (retried)",
            self.sink_failures.clone(),
        );
        r.register(
            "sink_merged",
            "Deltas merged for an endpoint that fell behind",
            self.sink_merged.clone(),
        );
        r.register(
            "sink_queued",
            "Deltas not yet acknowledged by every destination",
            self.sink_queued.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "Seconds from sending a delta until its destination acknowledged it",
            self.publish_latency.clone(),
        );
        r.register(
            "event_to_publish_seconds",
            "Seconds from an impression entering the learner until its rows were published",
            self.event_to_publish.clone(),
        );
        r.register(
            "checkpoint_age_seconds",
            "Seconds since the last checkpoint",
            self.checkpoint_age.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints written",
            self.checkpoints.clone(),
        );
        r.register(
            "epoch",
            "The publisher's epoch (delta source <name>@<epoch>)",
            self.epoch.clone(),
        );
        r.register(
            "dense_versions",
            "Dense-weight versions written to the model repository",
            self.dense_versions.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots written for late replicas",
            self.snapshots.clone(),
        );
        r.register("auc", "Progressive-validation AUC", self.auc.clone());
        r.register(
            "logloss",
            "Progressive-validation log loss",
            self.logloss.clone(),
        );
    }

    /// Counts a malformed event.
    pub fn malformed(&self, reason: &str) {
        self.malformed
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets the AUC and log loss gauges of `window` (`windowed` or `cumulative`).
    pub fn set_quality(&self, window: &str, auc: f64, logloss: f64) {
        let l = WindowLabel {
            window: window.to_string(),
        };
        self.auc.get_or_create(&l).set(auc);
        self.logloss.get_or_create(&l).set(logloss);
    }

    /// Sets the lag of one source partition.
    pub fn set_lag(&self, partition: &str, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabel {
                partition: partition.to_string(),
            })
            .set(lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_the_prefix() {
        let m = LearnMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.samples.inc_by(3);
        m.malformed("bad_json");
        m.set_quality("cumulative", 0.75, 0.5);
        m.set_lag("impressions/0", 7);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encodes");
        for needle in [
            "kiln_learn_samples_total 3",
            "kiln_learn_malformed_events_total{reason=\"bad_json\"} 1",
            "kiln_learn_auc{window=\"cumulative\"} 0.75",
            "kiln_learn_consumer_lag{partition=\"impressions/0\"} 7",
            "kiln_learn_event_to_publish_seconds_bucket",
            "kiln_learn_checkpoint_age_seconds",
        ] {
            assert!(out.contains(needle), "{needle} missing from\n{out}");
        }
    }
}
