//! A named tensor whose data are kept as little-endian bytes, the layout of the protocol's raw
//! binary tensors, so that binary HTTP bodies and gRPC raw contents need no conversion.

use crate::dtype::DataType;
use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};

/// A tensor: name, element type, shape and row-major little-endian data.
///
/// `BYTES` tensors hold each element as a 4-byte little-endian length followed by its bytes,
/// exactly as Triton's binary tensor extension serializes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Input or output name as the model declares it.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Shape; every dimension is concrete (>= 0).
    pub shape: Vec<i64>,
    /// Row-major data, little-endian.
    pub data: Bytes,
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust scalar type that maps to one fixed-size protocol [`DataType`].
///
/// Sealed: tensors copy these types' memory in bulk, which is sound only for the plain scalars
/// implemented here.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The protocol data type of this scalar.
    const DTYPE: DataType;
    /// Appends the little-endian encoding of `self`.
    fn put_le(self, out: &mut Vec<u8>);
    /// Reads one value from exactly `size_of::<Self>()` little-endian bytes.
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DataType = $d;
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("element width"))
            }
        }
    };
}
element!(u8, DataType::Uint8);
element!(u16, DataType::Uint16);
element!(u32, DataType::Uint32);
element!(u64, DataType::Uint64);
element!(i8, DataType::Int8);
element!(i16, DataType::Int16);
element!(i32, DataType::Int32);
element!(i64, DataType::Int64);
element!(half::f16, DataType::Fp16);
element!(f32, DataType::Fp32);
element!(f64, DataType::Fp64);

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn from_le(b: &[u8]) -> Self {
        b[0] != 0
    }
}

/// Number of elements of `shape`, or an error naming `what` if a dimension is negative or the
/// product overflows.
pub fn element_count(shape: &[i64], what: &str) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            return Err(Error::invalid(format!(
                "{what}: shape {shape:?} has a negative dimension"
            )));
        }
        n = n
            .checked_mul(d as usize)
            .ok_or_else(|| Error::invalid(format!("{what}: shape {shape:?} is too large")))?;
    }
    Ok(n)
}

impl Tensor {
    /// A tensor from typed values; panics if `values.len()` does not match `shape`.
    pub fn from_vec<T: Element>(name: impl Into<String>, shape: Vec<i64>, values: &[T]) -> Self {
        let n: i64 = shape.iter().product();
        assert_eq!(n as usize, values.len(), "shape does not match values");
        let bytes = std::mem::size_of_val(values);
        let mut out = Vec::with_capacity(bytes);
        if cfg!(target_endian = "little") {
            // SAFETY: the view covers exactly the `bytes` bytes of `values`; the element types
            // are plain scalars without padding (bool is one byte of 0 or 1), so their memory
            // is exactly their little-endian encoding.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), bytes)
            });
        } else {
            for v in values {
                v.put_le(&mut out);
            }
        }
        Tensor {
            name: name.into(),
            dtype: T::DTYPE,
            shape,
            data: Bytes::from(out),
        }
    }

    /// A `BYTES` tensor from byte strings.
    pub fn from_strings<S: AsRef<[u8]>>(
        name: impl Into<String>,
        shape: Vec<i64>,
        values: &[S],
    ) -> Self {
        let mut out = Vec::new();
        for v in values {
            let v = v.as_ref();
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        Tensor {
            name: name.into(),
            dtype: DataType::Bytes,
            shape,
            data: Bytes::from(out),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }

    /// True if the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the data length agrees with shape and dtype (every `BYTES` element complete).
    pub fn validate(&self) -> Result<()> {
        let n = element_count(&self.shape, &format!("tensor '{}'", self.name))?;
        match self.dtype.size() {
            Some(w) => {
                if self.data.len() != n * w {
                    return Err(Error::invalid(format!(
                        "tensor '{}': expected {} bytes for shape {:?} of {}, got {}",
                        self.name,
                        n * w,
                        self.shape,
                        self.dtype,
                        self.data.len()
                    )));
                }
            }
            None => {
                // counted without collecting the elements; the slower walk names the fault
                let got = match crate::request::count_byte_elements(&self.data) {
                    Some(n) => n,
                    None => self.byte_elements()?.len(),
                };
                if got != n {
                    return Err(Error::invalid(format!(
                        "tensor '{}': expected {n} BYTES elements for shape {:?}, got {got}",
                        self.name, self.shape
                    )));
                }
            }
        }
        Ok(())
    }

    /// Typed copy of the data; errors if `T` is not this tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::invalid(format!(
                "tensor '{}' is {}, not {}",
                self.name,
                self.dtype,
                T::DTYPE
            )));
        }
        let w = std::mem::size_of::<T>();
        let n = self.data.len() / w;
        if cfg!(target_endian = "little") && T::DTYPE != DataType::Bool {
            // One copy of the bytes: protocol data are little-endian like the machine, and every
            // bit pattern is a valid value of the numeric element types (all but bool).
            let mut out = Vec::<T>::with_capacity(n);
            // SAFETY: `out` has room for n elements = n * w bytes, the source holds at least that
            // many, the two do not overlap, and T (not bool) accepts any bit pattern.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.data.as_ptr(),
                    out.as_mut_ptr().cast::<u8>(),
                    n * w,
                );
                out.set_len(n);
            }
            return Ok(out);
        }
        Ok(self.data.chunks_exact(w).map(T::from_le).collect())
    }

    /// The elements of a `BYTES` tensor, as slices of its data.
    pub fn byte_elements(&self) -> Result<Vec<&[u8]>> {
        split_byte_elements(&self.data, &self.name)
    }

    /// Number of rows (the first dimension), or 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().map(|&d| d.max(0) as usize).unwrap_or(1)
    }

    /// Concatenates tensors along the first dimension; all must share name, dtype and the
    /// shape past the first dimension.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::internal("concat of no tensors"))?;
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        let mut rows = 0i64;
        let mut total = 0usize;
        for p in parts {
            if p.dtype != first.dtype || p.shape.get(1..) != first.shape.get(1..) {
                return Err(Error::invalid(format!(
                    "tensor '{}': cannot batch shape {:?} {} with {:?} {}",
                    first.name, p.shape, p.dtype, first.shape, first.dtype
                )));
            }
            rows += p.shape.first().copied().unwrap_or(1);
            total += p.data.len();
        }
        let mut data = BytesMut::with_capacity(total);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        let mut shape = first.shape.clone();
        if shape.is_empty() {
            shape.push(rows);
        } else {
            shape[0] = rows;
        }
        Ok(Tensor {
            name: first.name.clone(),
            dtype: first.dtype,
            shape,
            data: data.freeze(),
        })
    }

    /// Splits along the first dimension into consecutive pieces of `counts` rows each.
    /// The pieces share this tensor's buffer (no copy for fixed-size types).
    pub fn split_rows(&self, counts: &[usize]) -> Result<Vec<Tensor>> {
        let rows = self.rows();
        if counts.iter().sum::<usize>() != rows || self.shape.is_empty() {
            return Err(Error::internal(format!(
                "output '{}' has {rows} rows, cannot split into {counts:?}",
                self.name
            )));
        }
        let per_row = self.shape[1..]
            .iter()
            .map(|&d| d as usize)
            .product::<usize>();
        let mut out = Vec::with_capacity(counts.len());
        let mut shape = self.shape.clone();
        match self.dtype.size() {
            Some(w) => {
                let mut off = 0;
                for &c in counts {
                    let len = c * per_row * w;
                    shape[0] = c as i64;
                    out.push(Tensor {
                        name: self.name.clone(),
                        dtype: self.dtype,
                        shape: shape.clone(),
                        data: self.data.slice(off..off + len),
                    });
                    off += len;
                }
            }
            None => {
                let offsets = byte_element_offsets(&self.data, &self.name)?;
                let mut elem = 0;
                for &c in counts {
                    let start = offsets[elem];
                    elem += c * per_row;
                    let end = offsets[elem];
                    shape[0] = c as i64;
                    out.push(Tensor {
                        name: self.name.clone(),
                        dtype: self.dtype,
                        shape: shape.clone(),
                        data: self.data.slice(start..end),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Start offsets of each length-prefixed element plus the end offset.
fn byte_element_offsets(data: &[u8], name: &str) -> Result<Vec<usize>> {
    let mut offs = vec![0];
    let mut i = 0;
    while i < data.len() {
        if i + 4 > data.len() {
            return Err(Error::invalid(format!(
                "tensor '{name}': truncated BYTES element length at offset {i}"
            )));
        }
        let len = u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
        i += 4;
        if i + len > data.len() {
            return Err(Error::invalid(format!(
                "tensor '{name}': BYTES element of {len} bytes at offset {} runs past the end",
                i - 4
            )));
        }
        i += len;
        offs.push(i);
    }
    Ok(offs)
}

/// Splits length-prefixed `BYTES` data into its elements.
pub fn split_byte_elements<'a>(data: &'a [u8], name: &str) -> Result<Vec<&'a [u8]>> {
    let offs = byte_element_offsets(data, name)?;
    Ok(offs.windows(2).map(|w| &data[w[0] + 4..w[1]]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_split_round_trips() {
        let a = Tensor::from_vec("x", vec![1, 2], &[1.0f32, 2.0]);
        let b = Tensor::from_vec("x", vec![2, 2], &[3.0f32, 4.0, 5.0, 6.0]);
        let c = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(c.shape, vec![3, 2]);
        assert_eq!(
            c.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let parts = c.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
    }

    #[test]
    fn bytes_split_and_validate() {
        let t = Tensor::from_strings("s", vec![3], &["a", "", "xyz"]);
        t.validate().unwrap();
        assert_eq!(t.byte_elements().unwrap(), vec![&b"a"[..], b"", b"xyz"]);
        let parts = t.split_rows(&[2, 1]).unwrap();
        assert_eq!(parts[1].byte_elements().unwrap(), vec![&b"xyz"[..]]);
        let mut bad = t.clone();
        bad.data = bad.data.slice(0..bad.data.len() - 1);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn typed_copies_match_the_per_element_encoding_at_any_alignment() {
        let values: Vec<f32> = (0..37).map(|i| i as f32 * -1.25 + 0.5).collect();
        let t = Tensor::from_vec("x", vec![37], &values);
        let mut manual = Vec::new();
        for v in &values {
            v.put_le(&mut manual);
        }
        assert_eq!(&t.data[..], &manual[..]);
        // the same bytes at every offset from an aligned start
        for off in 0..8 {
            let mut buf = vec![0u8; off];
            buf.extend_from_slice(&manual);
            let shifted = Tensor {
                data: Bytes::from(buf).slice(off..),
                ..t.clone()
            };
            assert_eq!(shifted.to_vec::<f32>().unwrap(), values, "offset {off}");
        }
        let ids = [i64::MIN, -1, 0, 7, i64::MAX];
        let t = Tensor::from_vec("ids", vec![5], &ids);
        assert_eq!(t.to_vec::<i64>().unwrap(), ids);
        let halves = [half::f16::from_f32(1.5), half::f16::from_f32(-2.0)];
        let t = Tensor::from_vec("h", vec![2], &halves);
        assert_eq!(t.to_vec::<half::f16>().unwrap(), halves);
        // bool reads any non-zero byte as true and never copies raw bytes into a bool
        let b = Tensor {
            name: "b".into(),
            dtype: DataType::Bool,
            shape: vec![3],
            data: Bytes::from_static(&[0, 2, 1]),
        };
        assert_eq!(b.to_vec::<bool>().unwrap(), [false, true, true]);
        assert_eq!(
            &Tensor::from_vec("b", vec![2], &[true, false]).data[..],
            &[1, 0]
        );
    }

    #[test]
    fn validate_checks_length() {
        let mut t = Tensor::from_vec("x", vec![2], &[1i64, 2]);
        t.validate().unwrap();
        t.shape = vec![3];
        let e = t.validate().unwrap_err();
        assert!(e.message.contains("expected 24 bytes"), "{e}");
    }
}
