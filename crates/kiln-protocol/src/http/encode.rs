//! Encoding of HTTP inference responses and error bodies.
//!
//! The JSON is written by hand into one buffer (numbers with `itoa` / `ryu`), which avoids a
//! `serde_json::Value` per element for large outputs.

use crate::request::{fmt_shape, Delivery};
use bytes::Bytes;
use half::f16;
use kiln_core::tensor::element_count;
use kiln_core::{DataType, Error, Result, Tensor};

/// Encodes an inference response.
///
/// Each output is `(tensor, delivery)`: binary outputs are announced in the JSON with
/// `parameters.binary_data_size` and their bytes follow the JSON in output order; inline ones
/// carry a flat `data` array (numbers, `true`/`false` for `BOOL`, strings for `BYTES`); outputs
/// already written to shared memory carry only their name, datatype and shape.
/// Non-finite floats are written as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`, as
/// protobuf's JSON mapping writes them, so the body is always valid JSON (bare `NaN` is not).
///
/// Returns the body and, when any output is binary, the length of the JSON part: the caller
/// then sets `Inference-Header-Content-Length` to it and the content type to
/// `application/octet-stream`. Fails if an output's data do not match its shape, or if a
/// `BYTES` output to be sent as JSON is not valid UTF-8 (the message tells the client to ask
/// for it as binary data).
///
/// This joins the body into one buffer; a server writing to a socket should use
/// [`encode_response_parts`], which shares large binary outputs instead of copying them.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[(Tensor, Delivery)],
) -> Result<(Bytes, Option<usize>)> {
    let parts = encode_response_parts(model_name, model_version, id, outputs)?;
    let json_len = parts.json_len;
    Ok((parts.into_bytes(), json_len))
}

/// Binary outputs up to this size are copied after the JSON, so a small response is one
/// buffer (one write); larger ones are sent from the output tensor's own memory.
const SHARE_AT_BYTES: usize = 16 * 1024;

/// An encoded HTTP inference response: `head`, then each of `tail` in order.
#[derive(Debug, Clone)]
pub struct EncodedResponse {
    /// The JSON part, followed by the leading binary outputs smaller than 16 KiB.
    pub head: Bytes,
    /// The remaining binary outputs, sharing the output tensors' memory (no copy).
    pub tail: Vec<Bytes>,
    /// The length of the JSON part when any output is binary, for
    /// `Inference-Header-Content-Length`; `None` for a JSON-only body.
    pub json_len: Option<usize>,
}

impl EncodedResponse {
    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the body is empty (never, for a valid response).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body as one buffer (copies the tail, if any).
    pub fn into_bytes(self) -> Bytes {
        if self.tail.is_empty() {
            return self.head;
        }
        let mut buf = Vec::with_capacity(self.len());
        buf.extend_from_slice(&self.head);
        for b in &self.tail {
            buf.extend_from_slice(b);
        }
        Bytes::from(buf)
    }
}

/// Encodes an inference response as [`encode_response`] does, but leaves binary outputs of
/// 16 KiB or more as shared slices after the JSON, so no output is copied into the body.
pub fn encode_response_parts(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[(Tensor, Delivery)],
) -> Result<EncodedResponse> {
    let json_estimate: usize = outputs
        .iter()
        .map(|(t, d)| {
            96 + if *d == Delivery::Inline {
                t.len() * 16
            } else {
                0
            }
        })
        .sum();
    // the binary outputs copied after the JSON: the leading ones under the share size
    let copied = outputs
        .iter()
        .filter(|(_, d)| *d == Delivery::Binary)
        .take_while(|(t, _)| t.data.len() < SHARE_AT_BYTES);
    let copied_len: usize = copied.clone().map(|(t, _)| t.data.len()).sum();
    let copied_count = copied.count();
    let mut buf = Vec::with_capacity(64 + json_estimate + copied_len);

    buf.extend_from_slice(b"{\"model_name\":");
    write_str(&mut buf, model_name);
    buf.extend_from_slice(b",\"model_version\":");
    write_str(&mut buf, model_version);
    if let Some(id) = id {
        buf.extend_from_slice(b",\"id\":");
        write_str(&mut buf, id);
    }
    buf.extend_from_slice(b",\"outputs\":[");
    for (i, (t, delivery)) in outputs.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let n = check_output(t)?;
        buf.extend_from_slice(b"{\"name\":");
        write_str(&mut buf, &t.name);
        buf.extend_from_slice(b",\"datatype\":\"");
        buf.extend_from_slice(t.dtype.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"shape\":[");
        let mut ints = itoa::Buffer::new();
        for (j, d) in t.shape.iter().enumerate() {
            if j > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(ints.format(*d).as_bytes());
        }
        buf.push(b']');
        match delivery {
            Delivery::Binary => {
                buf.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
                buf.extend_from_slice(ints.format(t.data.len()).as_bytes());
                buf.extend_from_slice(b"}}");
            }
            // Name, datatype and shape only, as Triton answers: Triton's C++ client reads any
            // output `parameters` as binary data and fails without `binary_data_size`.
            Delivery::SharedMemory(_) => buf.push(b'}'),
            Delivery::Inline => {
                buf.extend_from_slice(b",\"data\":[");
                write_data(&mut buf, t, n)?;
                buf.extend_from_slice(b"]}");
            }
        }
    }
    buf.extend_from_slice(b"]}");

    if !outputs.iter().any(|(_, d)| *d == Delivery::Binary) {
        return Ok(EncodedResponse {
            head: Bytes::from(buf),
            tail: Vec::new(),
            json_len: None,
        });
    }
    let json_len = buf.len();
    let mut binary = outputs.iter().filter(|(_, d)| *d == Delivery::Binary);
    for (t, _) in binary.by_ref().take(copied_count) {
        buf.extend_from_slice(&t.data);
    }
    Ok(EncodedResponse {
        head: Bytes::from(buf),
        tail: binary.map(|(t, _)| t.data.clone()).collect(),
        json_len: Some(json_len),
    })
}

/// Triton's HTTP error body: `{"error":"<message>"}`.
pub fn error_body(message: &str) -> Bytes {
    let mut buf = Vec::with_capacity(message.len() + 16);
    buf.extend_from_slice(b"{\"error\":");
    write_str(&mut buf, message);
    buf.push(b'}');
    Bytes::from(buf)
}

/// Checks that an output's data match its shape; returns its element count.
fn check_output(t: &Tensor) -> Result<usize> {
    let n = element_count(&t.shape, &format!("output '{}'", t.name))
        .map_err(|e| Error::internal(e.message))?;
    if let Some(w) = t.dtype.size() {
        if Some(t.data.len()) != n.checked_mul(w) {
            return Err(Error::internal(format!(
                "output '{}': {} bytes do not fit shape {} of {}",
                t.name,
                t.data.len(),
                fmt_shape(&t.shape),
                t.dtype
            )));
        }
    }
    Ok(n)
}

/// Writes the elements of `t` (`n` of them) as comma-separated JSON values.
fn write_data(buf: &mut Vec<u8>, t: &Tensor, n: usize) -> Result<()> {
    macro_rules! ints {
        ($t:ty) => {{
            let mut b = itoa::Buffer::new();
            for (i, c) in t.data.chunks_exact(std::mem::size_of::<$t>()).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                let v = <$t>::from_le_bytes(c.try_into().expect("chunk width"));
                buf.extend_from_slice(b.format(v).as_bytes());
            }
        }};
    }
    match t.dtype {
        DataType::Bool => {
            for (i, &b) in t.data.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(if b != 0 { b"true" } else { b"false" });
            }
        }
        DataType::Uint8 => ints!(u8),
        DataType::Uint16 => ints!(u16),
        DataType::Uint32 => ints!(u32),
        DataType::Uint64 => ints!(u64),
        DataType::Int8 => ints!(i8),
        DataType::Int16 => ints!(i16),
        DataType::Int32 => ints!(i32),
        DataType::Int64 => ints!(i64),
        DataType::Fp16 => {
            let mut b = ryu::Buffer::new();
            for (i, c) in t.data.chunks_exact(2).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_f32(buf, &mut b, f16::from_le_bytes([c[0], c[1]]).to_f32());
            }
        }
        DataType::Fp32 => {
            let mut b = ryu::Buffer::new();
            for (i, c) in t.data.chunks_exact(4).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_f32(
                    buf,
                    &mut b,
                    f32::from_le_bytes(c.try_into().expect("chunk width")),
                );
            }
        }
        DataType::Fp64 => {
            let mut b = ryu::Buffer::new();
            for (i, c) in t.data.chunks_exact(8).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                let v = f64::from_le_bytes(c.try_into().expect("chunk width"));
                match non_finite(v.is_nan(), v.is_infinite(), v < 0.0) {
                    Some(s) => buf.extend_from_slice(s),
                    None => buf.extend_from_slice(b.format_finite(v).as_bytes()),
                }
            }
        }
        DataType::Bytes => write_strings(buf, t, n)?,
    }
    Ok(())
}

/// Writes length-prefixed `BYTES` elements as JSON strings.
fn write_strings(buf: &mut Vec<u8>, t: &Tensor, n: usize) -> Result<()> {
    let data = &t.data[..];
    let mut pos = 0usize;
    let mut count = 0usize;
    while pos < data.len() {
        let elem = data
            .get(pos..pos + 4)
            .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
            .and_then(|len| data.get(pos + 4..pos + 4 + len));
        let Some(elem) = elem else {
            return Err(Error::internal(format!(
                "output '{}': malformed BYTES element at offset {pos}",
                t.name
            )));
        };
        let Ok(s) = std::str::from_utf8(elem) else {
            return Err(Error::invalid(format!(
                "output '{}': element {count} is not valid UTF-8 and cannot be sent as JSON; \
                 request the output as binary data (parameters.binary_data = true)",
                t.name
            )));
        };
        if count > 0 {
            buf.push(b',');
        }
        write_str(buf, s);
        pos += 4 + elem.len();
        count += 1;
    }
    if count != n {
        return Err(Error::internal(format!(
            "output '{}': {count} BYTES elements do not fit shape {}",
            t.name,
            fmt_shape(&t.shape)
        )));
    }
    Ok(())
}

fn write_f32(buf: &mut Vec<u8>, b: &mut ryu::Buffer, v: f32) {
    match non_finite(v.is_nan(), v.is_infinite(), v < 0.0) {
        Some(s) => buf.extend_from_slice(s),
        None => buf.extend_from_slice(b.format_finite(v).as_bytes()),
    }
}

fn non_finite(nan: bool, inf: bool, negative: bool) -> Option<&'static [u8]> {
    match (nan, inf, negative) {
        (true, _, _) => Some(br#""NaN""#),
        (false, true, false) => Some(br#""Infinity""#),
        (false, true, true) => Some(br#""-Infinity""#),
        _ => None,
    }
}

/// Writes `s` as a JSON string literal.
fn write_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(c >> 4) as usize]);
                buf.push(HEX[(c & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}
