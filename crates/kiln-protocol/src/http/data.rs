//! Reads the `data` of a JSON input straight into the little-endian bytes of its data type,
//! without building a `serde_json::Value` tree: a visitor walks flat or nested arrays in
//! row-major order and appends each element as it is parsed.

use super::json_error_message;
use half::f16;
use kiln_core::{DataType, Error, Result};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Destination of one input's elements.
struct Sink<'n> {
    /// Input name, for error messages.
    name: &'n str,
    /// Element type the values are converted to.
    dtype: DataType,
    /// Little-endian elements written so far (`BYTES`: 4-byte length then the bytes).
    out: Vec<u8>,
    /// Elements written so far.
    count: usize,
    /// The first failure; the visitor then returns a placeholder serde error.
    err: Option<String>,
}

impl Sink<'_> {
    fn fail<E: de::Error>(&mut self, msg: String) -> Result<(), E> {
        self.err = Some(format!("input '{}': {msg}", self.name));
        Err(E::custom("tensor data rejected"))
    }

    fn mismatch<E: de::Error>(&mut self, got: impl fmt::Display) -> Result<(), E> {
        let want = match self.dtype {
            DataType::Bool => "true or false",
            DataType::Bytes => "a string",
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => "a number",
            _ => "an integer",
        };
        let msg = format!("expected {want} for {}, got {got}", self.dtype);
        self.fail(msg)
    }

    fn out_of_range<E: de::Error>(&mut self, v: impl fmt::Display) -> Result<(), E> {
        let msg = format!("value {v} is out of range for {}", self.dtype);
        self.fail(msg)
    }

    /// Appends an integer JSON value (serde_json reports non-negative integers as `u64` and
    /// negative ones as `i64`; `i128` covers both).
    fn put_int<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        macro_rules! narrow {
            ($t:ty) => {
                match <$t>::try_from(v) {
                    Ok(x) => self.out.extend_from_slice(&x.to_le_bytes()),
                    Err(_) => return self.out_of_range(v),
                }
            };
        }
        match self.dtype {
            DataType::Uint8 => narrow!(u8),
            DataType::Uint16 => narrow!(u16),
            DataType::Uint32 => narrow!(u32),
            DataType::Uint64 => narrow!(u64),
            DataType::Int8 => narrow!(i8),
            DataType::Int16 => narrow!(i16),
            DataType::Int32 => narrow!(i32),
            DataType::Int64 => narrow!(i64),
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => return self.put_float(v as f64, v),
            DataType::Bool | DataType::Bytes => return self.mismatch(v),
        }
        self.count += 1;
        Ok(())
    }

    /// Appends a JSON number to a floating-point input; integer inputs refuse fractions.
    /// `shown` is the number as error messages show it.
    fn put_float<E: de::Error>(&mut self, v: f64, shown: impl fmt::Display) -> Result<(), E> {
        match self.dtype {
            DataType::Fp64 => self.out.extend_from_slice(&v.to_le_bytes()),
            DataType::Fp32 => {
                let x = v as f32;
                if x.is_infinite() && v.is_finite() {
                    return self.out_of_range(shown);
                }
                self.out.extend_from_slice(&x.to_le_bytes());
            }
            DataType::Fp16 => {
                let x = f16::from_f64(v);
                if x.is_infinite() && v.is_finite() {
                    return self.out_of_range(shown);
                }
                self.out.extend_from_slice(&x.to_le_bytes());
            }
            _ => return self.mismatch(shown),
        }
        self.count += 1;
        Ok(())
    }
}

/// Shows a JSON number in error messages the way JSON writes it (`1e300`, not 300 digits);
/// formatted only when a message needs it.
struct Num(f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(ryu::Buffer::new().format(self.0))
    }
}

/// Visits one JSON value of tensor data: an array (recursively) or a scalar.
struct DataSeed<'s, 'n>(&'s mut Sink<'n>);

impl<'de> DeserializeSeed<'de> for DataSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data: an array of numbers, booleans or strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(DataSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if self.0.dtype != DataType::Bool {
            return self.0.mismatch(v);
        }
        self.0.out.push(v as u8);
        self.0.count += 1;
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.put_int(v as i128)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.put_int(v as i128)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.put_float(v, Num(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let sink = self.0;
        if matches!(sink.dtype, DataType::Fp16 | DataType::Fp32 | DataType::Fp64) {
            // non-finite values as protobuf's JSON mapping (and Kiln's responses) write them
            let x = match v {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                _ => {
                    return sink.mismatch(
                        "a string (the strings a float takes are \"NaN\", \"Infinity\" and \
                         \"-Infinity\")",
                    )
                }
            };
            return sink.put_float(x, v);
        }
        if sink.dtype != DataType::Bytes {
            return sink.mismatch("a string");
        }
        let Ok(len) = u32::try_from(v.len()) else {
            return sink.fail(format!("string of {} bytes is too long", v.len()));
        };
        sink.out.extend_from_slice(&len.to_le_bytes());
        sink.out.extend_from_slice(v.as_bytes());
        sink.count += 1;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.mismatch("null")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.0.mismatch("an object")
    }
}

/// Converts the JSON `data` of the input `name` to little-endian bytes of `dtype`.
/// Returns the bytes and the number of elements found; `expected` only sizes the buffer.
pub(crate) fn parse_data(
    raw: &RawValue,
    name: &str,
    dtype: DataType,
    expected: usize,
) -> Result<(Vec<u8>, usize)> {
    let width = dtype.size().unwrap_or(8);
    let mut sink = Sink {
        name,
        dtype,
        // Capacity is bounded by the text: every element takes at least one byte of JSON.
        out: Vec::with_capacity(expected.min(raw.get().len()).saturating_mul(width)),
        count: 0,
        err: None,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match DataSeed(&mut sink).deserialize(&mut de) {
        Ok(()) => Ok((sink.out, sink.count)),
        Err(e) => Err(Error::invalid(sink.err.take().unwrap_or_else(|| {
            format!("input '{name}': data: {}", json_error_message(&e))
        }))),
    }
}
