//! Optimizers: per-coordinate updates over slices.

pub mod adagrad;
pub mod adam;
pub mod ftrl;
