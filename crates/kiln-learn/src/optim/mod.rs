//! Optimizers: per-coordinate updates over slices.
