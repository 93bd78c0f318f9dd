//! Metrics of the delta-topic subscriber, per model: deltas applied, duplicates, rejections by
//! reason, rows restored from snapshots, and consumer lag per partition.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
}

/// Labels of the rejection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Model name.
    pub model: String,
    /// Why the message was skipped (see [`Reject`](super::Reject)).
    pub reason: String,
}

/// Labels of the lag gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Model name.
    pub model: String,
    /// Partition of the model's delta topic.
    pub partition: String,
}

/// Every metric family of the subscriber; register once with [`DeltaSourceMetrics::register`].
#[derive(Default)]
pub struct DeltaSourceMetrics {
    applied: Family<ModelLabels, Counter>,
    duplicates: Family<ModelLabels, Counter>,
    gaps: Family<ModelLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    restored_rows: Family<ModelLabels, Counter>,
    lag: Family<PartitionLabels, Gauge>,
}

impl DeltaSourceMetrics {
    /// Registers every family in `registry` (`kiln_delta_source_*`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "kiln_delta_source_applied",
            "Deltas from the model's delta topic applied to its tables",
            self.applied.clone(),
        );
        r.register(
            "kiln_delta_source_duplicates",
            "Deltas from the delta topic whose sequence number was already applied (replays)",
            self.duplicates.clone(),
        );
        r.register(
            "kiln_delta_source_gaps",
            "Deltas applied although they skipped sequence numbers (tables with gap_policy apply)",
            self.gaps.clone(),
        );
        r.register(
            "kiln_delta_source_rejected",
            "Delta-topic messages skipped, by reason (garbage, no_key, unknown_table, \
             wrong_table, wrong_dim, gap, refused)",
            self.rejected.clone(),
        );
        r.register(
            "kiln_delta_source_restored_rows",
            "Rows restored from learner snapshots into the served tables",
            self.restored_rows.clone(),
        );
        r.register(
            "kiln_delta_source_lag",
            "Messages of the delta topic partition not yet applied (high watermark minus position)",
            self.lag.clone(),
        );
    }

    fn model(model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }

    pub(crate) fn applied(&self, model: &str) {
        self.applied.get_or_create(&Self::model(model)).inc();
    }

    pub(crate) fn duplicate(&self, model: &str) {
        self.duplicates.get_or_create(&Self::model(model)).inc();
    }

    pub(crate) fn gap(&self, model: &str) {
        self.gaps.get_or_create(&Self::model(model)).inc();
    }

    /// Counts one rejection; returns how many of this model and reason there were before it.
    pub(crate) fn rejected(&self, model: &str, reason: &str) -> u64 {
        self.rejected
            .get_or_create(&RejectLabels {
                model: model.to_string(),
                reason: reason.to_string(),
            })
            .inc()
    }

    pub(crate) fn restored_rows(&self, model: &str, rows: u64) {
        self.restored_rows
            .get_or_create(&Self::model(model))
            .inc_by(rows);
    }

    pub(crate) fn lag(&self, model: &str, partition: i32, lag: i64) {
        self.lag
            .get_or_create(&PartitionLabels {
                model: model.to_string(),
                partition: partition.to_string(),
            })
            .set(lag);
    }
}
