//! What a request carries besides the [`InferRequest`] itself (the outputs asked for, how to
//! return them, inputs in shared memory), and the checks both decoders share.

use crate::shm::ShmRef;
use kiln_core::tensor::element_count;
use kiln_core::{DataType, Error, Result};

pub(crate) use kiln_core::request::fmt_shape;
/// The inference request both decoders produce and the runtime computes: one type from the
/// protocol down to the scheduler.
pub use kiln_core::InferRequest;

/// One inference request as the client sent it, whatever the transport: the [`InferRequest`]
/// the runtime computes, and what the server does with its outputs.
#[derive(Debug, Clone)]
pub struct WireRequest {
    /// Id, inputs (each one's data agree with its shape), priority and timeout.
    pub request: InferRequest,
    /// Outputs the client asked for; empty asks for every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level default for returning outputs as binary data over HTTP
    /// (`parameters.binary_data_output`); always false over gRPC.
    pub binary_data_output: bool,
    /// Inputs whose data are in a registered shared-memory region, by index into the
    /// request's inputs: those are unfilled until [`WireRequest::fill_shm_inputs`] fills them.
    pub shm_inputs: Vec<(usize, ShmRef)>,
}

impl WireRequest {
    /// A request with room for `inputs` inputs and `outputs` requested outputs.
    pub fn with_capacity(inputs: usize, outputs: usize) -> Self {
        WireRequest {
            request: InferRequest::with_capacity(inputs),
            outputs: Vec::with_capacity(outputs),
            binary_data_output: false,
            shm_inputs: Vec::new(),
        }
    }
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// The output's `parameters.binary_data` over HTTP: `Some(true)` returns it as binary data,
    /// `Some(false)` as JSON, `None` follows [`WireRequest::binary_data_output`].
    pub binary_data: Option<bool>,
    /// Where to write the output instead of the response: its shared-memory parameters.
    pub shared_memory: Option<ShmRef>,
    /// Triton's classification extension (`parameters.classification`): return the top `n`
    /// classes of each batch row as a BYTES tensor of `"<value>:<index>[:<label>]"` instead of
    /// the output's data.
    pub classification: Option<usize>,
}

/// How one output goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// In the response: a JSON `data` array over HTTP, `raw_output_contents` over gRPC.
    Inline,
    /// As binary data after the JSON (HTTP); `raw_output_contents` over gRPC.
    Binary,
    /// Already written to a shared-memory region; the response gives name, datatype and shape.
    SharedMemory(ShmRef),
}

impl WireRequest {
    /// Whether the output `name` goes back as binary data over HTTP: its own `binary_data`
    /// parameter if the client asked for it with one, else the request-level default.
    pub fn output_is_binary(&self, name: &str) -> bool {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.binary_data)
            .unwrap_or(self.binary_data_output)
    }
}

/// Parses a protocol data type name for the input `name`.
///
/// Names are matched exactly as the protocol spells them, in capitals (`FP32`, not `fp32`),
/// over HTTP and gRPC alike, as `config.toml` matches them.
pub(crate) fn parse_dtype(datatype: &str, name: &str) -> Result<DataType> {
    if let Some(d) = DataType::ALL.into_iter().find(|d| d.as_str() == datatype) {
        return Ok(d);
    }
    let hint = DataType::ALL
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(datatype))
        .map(|d| format!(" (datatypes are spelled in capitals: '{d}')"))
        .unwrap_or_default();
    Err(Error::invalid(format!(
        "input '{name}': unknown datatype '{}'{hint}",
        datatype.escape_debug()
    )))
}

/// Number of elements of the input `name`'s shape.
pub(crate) fn input_elements(shape: &[i64], name: &str) -> Result<usize> {
    element_count(shape, &format!("input '{name}'"))
}

/// The error for a wrong number of elements in the input `name`.
pub(crate) fn count_mismatch(name: &str, shape: &[i64], want: usize, got: usize) -> Error {
    Error::invalid(format!(
        "{} (shape {})",
        kiln_core::texts::input_element_count(name, "", false, want, got),
        fmt_shape(shape)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_binary_choice() {
        let mut r = WireRequest {
            outputs: vec![
                RequestedOutput {
                    name: "a".into(),
                    binary_data: Some(false),
                    shared_memory: None,
                    classification: None,
                },
                RequestedOutput {
                    name: "b".into(),
                    binary_data: None,
                    shared_memory: None,
                    classification: None,
                },
            ],
            binary_data_output: true,
            ..WireRequest::with_capacity(0, 2)
        };
        assert!(!r.output_is_binary("a"));
        assert!(r.output_is_binary("b"));
        assert!(r.output_is_binary("c"));
        r.binary_data_output = false;
        assert!(!r.output_is_binary("b"));
    }
}
