//! Triton's system shared-memory extension, on the wire: a client creates a POSIX
//! shared-memory object, registers a region of it under a name, and then sends inputs or
//! receives outputs through the region instead of the request and response bodies.
//!
//! This module holds what a request says about it: [`ShmRef`], read from a tensor's
//! `shared_memory_*` parameters, and [`WireRequest::fill_shm_inputs`], which checks the bytes
//! read from a region against the input's shape. The table of registered regions (opening,
//! mapping, reading and writing objects) is server state and lives in the server.

use crate::request::WireRequest;
use bytes::Bytes;
use kiln_core::{Error, Result};
use std::fmt::Display;

/// Where a tensor's data lie: the `shared_memory_region`, `shared_memory_offset` and
/// `shared_memory_byte_size` parameters of an input or a requested output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmRef {
    /// Name of a registered region.
    pub region: String,
    /// Offset into the region, in bytes.
    pub offset: u64,
    /// Size of the data (inputs) or of the space for it (outputs), in bytes.
    pub byte_size: u64,
}

impl ShmRef {
    /// Reads the three parameters of input or output `what`: `get_str` / `get_uint` return a
    /// parameter's value if it is present (an error if it has the wrong type). `None` when the
    /// tensor does not use shared memory.
    pub fn from_params(
        what: &str,
        get_str: impl Fn(&str) -> Result<Option<String>>,
        get_uint: impl Fn(&str) -> Result<Option<u64>>,
    ) -> Result<Option<ShmRef>> {
        let region = get_str("shared_memory_region")?;
        let byte_size = get_uint("shared_memory_byte_size")?;
        let offset = get_uint("shared_memory_offset")?;
        match (region, byte_size) {
            (Some(region), Some(byte_size)) => Ok(Some(ShmRef {
                region,
                offset: offset.unwrap_or(0),
                byte_size,
            })),
            (Some(_), None) => Err(Error::invalid(format!(
                "{what}: parameters.shared_memory_region needs parameters.shared_memory_byte_size"
            ))),
            (None, Some(_)) => Err(Error::invalid(format!(
                "{what}: parameters.shared_memory_byte_size needs parameters.shared_memory_region"
            ))),
            (None, None) if offset.is_some() => Err(Error::invalid(format!(
                "{what}: parameters.shared_memory_offset needs parameters.shared_memory_region"
            ))),
            (None, None) => Ok(None),
        }
    }
}

impl WireRequest {
    /// Fills the data of the shared-memory inputs ([`WireRequest::shm_inputs`]) with what
    /// `read` returns for each one's [`ShmRef`] (the second argument names the input, for
    /// errors), and checks each against its shape, as inputs from the body are checked when
    /// they are decoded.
    pub fn fill_shm_inputs(
        &mut self,
        mut read: impl FnMut(&ShmRef, &dyn Display) -> Result<Bytes>,
    ) -> Result<()> {
        for (i, r) in std::mem::take(&mut self.shm_inputs) {
            let t = self
                .request
                .inputs()
                .get(i)
                .ok_or_else(|| Error::internal("shared-memory input index out of range"))?;
            let data = read(&r, &format_args!("input '{}'", t.name))?;
            self.request
                .fill_input(i, data, "shared_memory_byte_size")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "shm_tests.rs"]
mod tests;
