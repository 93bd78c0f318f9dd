//! Event sources: where raw events come from, in batches, each event with its [`Position`].
//!
//! A source hands out the bytes of each event (one JSON object, parsed later by
//! [`crate::event::parse_line`]) and never parses them itself. After a checkpoint the learner
//! calls [`Source::commit`] with the positions whose effects the checkpoint holds, so a
//! restart resumes from there (a Kafka consumer group commits offsets; files need nothing).

pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;

use crate::error::Result;
use std::future::Future;
use std::time::Duration;

/// Where an event was read: a stream (a Kafka topic, or the JSONL files), a partition in it
/// (a Kafka partition, or a file's index in `[sources] jsonl`) and an offset (a Kafka offset,
/// or a 1-based line number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Index into [`Source::streams`].
    pub stream: u16,
    /// The partition, or the file's index.
    pub partition: i32,
    /// The offset, or the line number.
    pub offset: i64,
}

/// Events read together: their bytes, back to back, and their positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBatch {
    data: Vec<u8>,
    ends: Vec<usize>,
    positions: Vec<Position>,
}

impl EventBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one event.
    pub fn push(&mut self, position: Position, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.ends.push(self.data.len());
        self.positions.push(position);
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of event data held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Event `i`: its position and bytes.
    pub fn get(&self, i: usize) -> (Position, &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (self.positions[i], &self.data[start..self.ends[i]])
    }

    /// The events in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Position, &[u8])> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// The events' positions in order.
    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.positions.clear();
    }
}

/// A source of raw events.
pub trait Source: Send {
    /// The streams' names (Kafka topics, or `"jsonl"`), indexed by [`Position::stream`].
    fn streams(&self) -> &[String];

    /// Up to `max` events, waiting at most `wait` for the first: `Ok(None)` once the source has
    /// ended (the files are read and not followed), an empty batch when nothing came in time.
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<EventBatch>>> + Send;

    /// Records that the effects of every event up to and including `positions` (the last
    /// position per stream and partition) are checkpointed; a restart resumes after them.
    fn commit(&mut self, positions: &[Position]) -> Result<()>;
}
