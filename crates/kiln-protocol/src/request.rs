//! The transport-independent inference request both front ends decode into, and the checks
//! they share.

use crate::shm::ShmRef;
use kiln_core::tensor::element_count;
use kiln_core::{DataType, Error, Result};

/// One inference request as the client sent it, whatever the transport.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    /// Request id, echoed in the response.
    pub id: Option<String>,
    /// Input tensors in the order the client sent them; each one's data agrees with its shape.
    pub inputs: Vec<kiln_core::Tensor>,
    /// Outputs the client asked for; empty asks for every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// Request priority (`parameters.priority`); `None` when absent or `0`, which the protocol
    /// defines as the model's default priority.
    pub priority: Option<u64>,
    /// Request timeout in microseconds (`parameters.timeout`); `None` when absent or `0`, which
    /// the protocol defines as no timeout.
    pub timeout_us: Option<u64>,
    /// Request-level default for returning outputs as binary data over HTTP
    /// (`parameters.binary_data_output`); always false over gRPC.
    pub binary_data_output: bool,
    /// Inputs whose data are in a registered shared-memory region, by index into `inputs`:
    /// those tensors have empty data until [`crate::shm::Regions::resolve_inputs`] fills them.
    pub shm_inputs: Vec<(usize, ShmRef)>,
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// The output's `parameters.binary_data` over HTTP: `Some(true)` returns it as binary data,
    /// `Some(false)` as JSON, `None` follows [`InferRequest::binary_data_output`].
    pub binary_data: Option<bool>,
    /// Where to write the output instead of the response: its shared-memory parameters.
    pub shared_memory: Option<ShmRef>,
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

impl InferRequest {
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

/// Formats a shape the way error messages show it: `[1,256]`.
pub(crate) fn fmt_shape(shape: &[i64]) -> String {
    let mut s = String::with_capacity(2 + shape.len() * 4);
    s.push('[');
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&d.to_string());
    }
    s.push(']');
    s
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

/// Counts the length-prefixed elements of `BYTES` data, or `None` if the data are malformed.
pub(crate) fn count_byte_elements(data: &[u8]) -> Option<usize> {
    let mut i = 0usize;
    let mut n = 0usize;
    while i < data.len() {
        let len_bytes: [u8; 4] = data.get(i..i + 4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        i = i.checked_add(4 + len)?;
        if i > data.len() {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// Checks that raw little-endian data of `len` bytes (`BYTES`: `data`) fits the input's shape.
/// `what` names where the data came from (`binary_data_size`, `raw_input_contents`).
pub(crate) fn check_raw_data(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    data: &[u8],
    what: &str,
) -> Result<()> {
    let n = input_elements(shape, name)?;
    match dtype.size() {
        Some(w) => {
            let want = n.checked_mul(w).ok_or_else(|| {
                Error::invalid(format!(
                    "input '{name}': shape {} is too large",
                    fmt_shape(shape)
                ))
            })?;
            if data.len() != want {
                return Err(Error::invalid(format!(
                    "input '{name}': {what} is {} bytes, but shape {} of {dtype} needs {want}",
                    data.len(),
                    fmt_shape(shape)
                )));
            }
        }
        None => match count_byte_elements(data) {
            Some(got) if got == n => {}
            Some(got) => {
                return Err(Error::invalid(format!(
                    "input '{name}': expected {n} elements for shape {}, got {got}",
                    fmt_shape(shape)
                )))
            }
            None => {
                return Err(Error::invalid(format!(
                    "input '{name}': {what} is not a sequence of 4-byte little-endian lengths \
                     each followed by that many bytes"
                )))
            }
        },
    }
    Ok(())
}

/// The error for a wrong number of elements in the input `name`.
pub(crate) fn count_mismatch(name: &str, shape: &[i64], want: usize, got: usize) -> Error {
    Error::invalid(format!(
        "input '{name}': expected {want} elements for shape {}, got {got}",
        fmt_shape(shape)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_element_counting() {
        assert_eq!(count_byte_elements(b""), Some(0));
        assert_eq!(count_byte_elements(b"\x01\0\0\0a\0\0\0\0"), Some(2));
        assert_eq!(count_byte_elements(b"\x02\0\0\0a"), None);
        assert_eq!(count_byte_elements(b"\x01\0\0"), None);
        assert_eq!(count_byte_elements(b"\xff\xff\xff\xff"), None);
    }

    #[test]
    fn output_binary_choice() {
        let mut r = InferRequest {
            outputs: vec![
                RequestedOutput {
                    name: "a".into(),
                    binary_data: Some(false),
                    shared_memory: None,
                },
                RequestedOutput {
                    name: "b".into(),
                    binary_data: None,
                    shared_memory: None,
                },
            ],
            binary_data_output: true,
            ..Default::default()
        };
        assert!(!r.output_is_binary("a"));
        assert!(r.output_is_binary("b"));
        assert!(r.output_is_binary("c"));
        r.binary_data_output = false;
        assert!(!r.output_is_binary("b"));
    }
}
