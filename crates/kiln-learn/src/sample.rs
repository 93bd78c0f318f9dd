//! A labelled sample: an impression joined with its actions (or its window's close).

/// One training example, in the model's feature order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The impression id.
    pub id: String,
    /// The impression's event time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// `true` when a positive action arrived inside the window.
    pub label: bool,
    /// One entry per sparse feature of the model spec, in spec order, each the hashed table
    /// keys of that feature (padding excluded; may be empty).
    pub keys: Vec<Vec<u64>>,
    /// Dense features (empty when the model has no dense input).
    pub dense: Vec<f32>,
    /// When the impression entered the learner, ms since the Unix epoch (for the
    /// event-to-publish latency).
    pub seen_ms: u64,
}
