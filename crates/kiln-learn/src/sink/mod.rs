//! Where published deltas go: the servers' delta admin API ([`admin::AdminSink`]) or a Kafka
//! delta topic (the `kafka` feature).
//!
//! The publisher hands a sink one batch per publish (at most one delta per table, each
//! table's sequence number one more than its previous one) and never waits on a destination:
//! [`Sink::send`] queues. The learner reads back how far delivery has got
//! ([`Sink::status`]) to rotate its journal and to write snapshots for late replicas.

pub mod admin;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod topic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_embed::Delta;

use crate::error::Result;

/// One publish: its number (from 1, increasing by one per publish of this process) and its
/// deltas, at most one per table.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The publish number.
    pub number: u64,
    /// The deltas, each with `table`, `source` and `seq` set.
    pub deltas: Vec<Arc<Delta>>,
}

/// How far delivery has got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStatus {
    /// Every batch numbered up to this one is acknowledged by every destination (0: none).
    pub acked: u64,
    /// Deltas handed over and not yet acknowledged everywhere, summed over destinations.
    pub queued: usize,
}

/// A destination for deltas.
pub trait Sink: Send {
    /// A name for logs and errors (a URL list or a topic).
    fn name(&self) -> String;

    /// Queues one publish for delivery, in order after the previous ones. Returns without
    /// waiting for any destination; an error means the batch was not accepted at all.
    fn send(&mut self, batch: Batch) -> Result<()>;

    /// How far delivery has got.
    fn status(&self) -> SinkStatus;

    /// Once batch `batch` and every one before it are acknowledged everywhere: the delivery
    /// positions right after it (per partition of the delta topic, the next offset to read;
    /// empty for sinks without positions). `None` while it is not.
    fn positions_after(&self, batch: u64) -> Option<BTreeMap<i32, i64>> {
        (self.status().acked >= batch).then(BTreeMap::new)
    }

    /// Waits up to `timeout` until every batch sent so far is acknowledged by every
    /// destination; returns whether it was.
    fn flush(&mut self, timeout: Duration) -> bool;
}

/// A sink that drops everything at once (a learner run that publishes nowhere).
#[derive(Debug, Default)]
pub struct NullSink {
    last: u64,
}

impl Sink for NullSink {
    fn name(&self) -> String {
        "nowhere".into()
    }

    fn send(&mut self, batch: Batch) -> Result<()> {
        self.last = batch.number;
        Ok(())
    }

    fn status(&self) -> SinkStatus {
        SinkStatus {
            acked: self.last,
            ..SinkStatus::default()
        }
    }

    fn flush(&mut self, _timeout: Duration) -> bool {
        true
    }
}
