//! Optimizers: per-coordinate updates over slices.

pub mod ftrl;
