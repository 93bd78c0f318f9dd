//! The one inference request every layer passes down, from the protocol decoders to the
//! scheduler, and the one check that each input's data agree with its shape.
//!
//! The length check runs once per input, when the input enters a request:
//! [`InferRequest::push_input`] (the protocol decoders, which know where the data came from),
//! [`InferRequest::fill_input`] (data that arrive later, from shared memory) or
//! [`InferRequest::checked`] (in-process callers). A request built with [`InferRequest::new`]
//! is checked once by [`InferRequest::take_inputs`], when the runtime takes its inputs. Either
//! way, a tensor whose bytes disagree with its shape and dtype never reaches an engine.

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::tensor::{element_count, Tensor};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One inference request, whatever the transport or caller.
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// Request id, echoed in the response and carried by the request's tracing span.
    pub id: Option<String>,
    /// Input tensors, in any order; private so that none enters unchecked.
    inputs: Vec<Tensor>,
    /// Priority level (1 = most urgent); `None` or 0 takes the model's default.
    pub priority: Option<u64>,
    /// Timeout; `None` or zero takes the model's default.
    pub timeout: Option<Duration>,
    /// When the server received the request, so request time includes decoding.
    pub received: Instant,
    /// Every request-level parameter the client sent, scalars rendered as text (`true`, `42`,
    /// `u42`): what canary routing (`routing_key`) and pipeline `switch` steps read.
    pub parameters: BTreeMap<String, String>,
    /// Whether the inputs still need their length check ([`InferRequest::new`]).
    unchecked: bool,
    /// Inputs added by [`InferRequest::push_unfilled`] whose data have not come yet.
    unfilled: Vec<usize>,
}

impl InferRequest {
    /// A request of `inputs` with default priority and timeout, received now. Their data are
    /// checked against their shapes when the runtime takes them ([`InferRequest::take_inputs`]).
    pub fn new(inputs: Vec<Tensor>) -> Self {
        InferRequest {
            unchecked: true,
            inputs,
            ..Self::with_capacity(0)
        }
    }

    /// A request of `inputs` checked now, so that an error names the input before anything is
    /// queued.
    pub fn checked(inputs: Vec<Tensor>) -> Result<Self> {
        let mut r = Self::with_capacity(inputs.len());
        for t in inputs {
            r.push_input(t, "data")?;
        }
        Ok(r)
    }

    /// A request with no inputs yet (room for `n`), default priority and timeout, received now.
    pub fn with_capacity(n: usize) -> Self {
        InferRequest {
            id: None,
            inputs: Vec::with_capacity(n),
            priority: None,
            timeout: None,
            received: Instant::now(),
            parameters: BTreeMap::new(),
            unchecked: false,
            unfilled: Vec::new(),
        }
    }

    /// Adds `t` after checking its data against its shape and dtype; `what` names where the
    /// data came from in the error (`binary_data_size`, `raw_input_contents`, ...).
    pub fn push_input(&mut self, t: Tensor, what: &str) -> Result<()> {
        check_data(&t.name, t.dtype, &t.shape, &t.data, what)?;
        self.inputs.push(t);
        Ok(())
    }

    /// Adds `t` without data (they arrive later, e.g. from shared memory) and returns its
    /// index; the request cannot run until [`InferRequest::fill_input`] gives them.
    pub fn push_unfilled(&mut self, mut t: Tensor) -> usize {
        t.data = Bytes::new();
        self.unfilled.push(self.inputs.len());
        self.inputs.push(t);
        self.inputs.len() - 1
    }

    /// Gives input `i` (added by [`InferRequest::push_unfilled`]) its data, checked against its
    /// shape; `what` names where they came from.
    pub fn fill_input(&mut self, i: usize, data: Bytes, what: &str) -> Result<()> {
        let pos = self
            .unfilled
            .iter()
            .position(|&u| u == i)
            .ok_or_else(|| Error::internal(format!("input {i} is not waiting for its data")))?;
        let t = &mut self.inputs[i];
        check_data(&t.name, t.dtype, &t.shape, &data, what)?;
        t.data = data;
        self.unfilled.swap_remove(pos);
        Ok(())
    }

    /// The inputs, in the order they were added.
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// Takes the inputs out for computing: checks them now if the request was built with
    /// [`InferRequest::new`], and refuses a request whose data have not all arrived.
    pub fn take_inputs(&mut self) -> Result<Vec<Tensor>> {
        if let Some(&i) = self.unfilled.first() {
            return Err(Error::internal(format!(
                "input '{}' has not received its data",
                self.inputs[i].name
            )));
        }
        if self.unchecked {
            for t in &self.inputs {
                t.validate()?;
            }
            self.unchecked = false;
        }
        Ok(std::mem::take(&mut self.inputs))
    }
}

/// Formats a shape the way error messages show it: `[1,256]`.
pub fn fmt_shape(shape: &[i64]) -> String {
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

/// Counts the length-prefixed elements of `BYTES` data, or `None` if the data are malformed.
pub fn count_byte_elements(data: &[u8]) -> Option<usize> {
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

/// Checks that little-endian data (`BYTES`: length-prefixed elements) fit the input `name`'s
/// shape and dtype. `what` names where the data came from.
pub fn check_data(
    name: &str,
    dtype: DataType,
    shape: &[i64],
    data: &[u8],
    what: &str,
) -> Result<()> {
    let n = element_count(shape, &format!("input '{name}'"))?;
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
                    "{} ({what}, shape {} of {dtype})",
                    crate::texts::input_byte_size(name, "", want, data.len()),
                    fmt_shape(shape)
                )));
            }
        }
        None => match count_byte_elements(data) {
            Some(got) if got == n => {}
            Some(got) => {
                return Err(Error::invalid(format!(
                    "{} (shape {})",
                    crate::texts::input_element_count(name, "", true, n, got),
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

    fn short() -> Tensor {
        let mut t = Tensor::from_vec("x", vec![2], &[1.0f32, 2.0]);
        t.data = t.data.slice(..4);
        t
    }

    #[test]
    fn no_input_enters_unchecked() {
        let mut r = InferRequest::with_capacity(2);
        let e = r.push_input(short(), "raw_input_contents").unwrap_err();
        assert!(
            e.message.contains(
                "input byte size mismatch for input 'x'. Expected 8, got 4 (raw_input_contents"
            ),
            "{e}"
        );
        assert!(r.inputs().is_empty());
        assert!(InferRequest::checked(vec![short()]).is_err());
        // built unchecked: checked when the runtime takes the inputs
        let e = InferRequest::new(vec![short()]).take_inputs().unwrap_err();
        assert!(e.message.contains("expected 8 bytes"), "{e}");
        let ok = Tensor::from_vec("x", vec![2], &[1.0f32, 2.0]);
        assert_eq!(InferRequest::new(vec![ok]).take_inputs().unwrap().len(), 1);
    }

    #[test]
    fn unfilled_inputs_block_the_request_until_filled_with_checked_data() {
        let mut r = InferRequest::with_capacity(1);
        let i = r.push_unfilled(Tensor::from_vec("x", vec![2], &[0.0f32, 0.0]));
        assert!(r.clone().take_inputs().is_err(), "no data yet");
        let full = Tensor::from_vec("x", vec![2], &[1.0f32, 2.0]).data;
        assert!(r.fill_input(i, full.slice(..4), "shm").is_err());
        r.fill_input(i, full, "shm").unwrap();
        assert!(r.fill_input(i, Bytes::new(), "shm").is_err(), "filled once");
        assert_eq!(
            r.take_inputs().unwrap()[0].to_vec::<f32>().unwrap(),
            [1.0, 2.0]
        );
    }
}
