//! Conversions between Kiln tensors (little-endian bytes) and ONNX Runtime values.
//!
//! Inputs of fixed-size numeric types are passed to ONNX Runtime as views of the request's own
//! buffer when it is suitably aligned (no copy); otherwise, and for `BOOL`, `FP16` and `BYTES`,
//! they are copied once. Outputs are copied once out of ONNX Runtime's buffers. `BYTES`
//! elements go in and out with their lengths, so any byte (NUL, not UTF-8) round-trips.

use kiln_core::{DataType, Error, Result, Tensor};
use ort::session::SessionInputValue;
use ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, TensorRef,
};
use ort::AsPointer;

#[cfg(not(target_endian = "little"))]
compile_error!("the onnxruntime backend assumes a little-endian target");

/// The Kiln data type of an ONNX Runtime element type, if the protocol has one.
pub fn kiln_dtype(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn ort_err<'a>(what: &'a str, name: &'a str) -> impl Fn(ort::Error) -> Error + 'a {
    move |e| Error::invalid(format!("{what} '{name}': {e}"))
}

/// A view of `data` as `T` when its address is aligned for `T`, else a copy.
fn numeric<'a, T>(t: &'a Tensor) -> Result<SessionInputValue<'a>>
where
    T: PrimitiveTensorElementType + Copy + std::fmt::Debug + kiln_core::tensor::Element,
{
    let shape = t.shape.clone();
    // SAFETY: T is a plain numeric type for which every bit pattern is valid; align_to only
    // yields a middle slice of properly aligned, fully initialized elements.
    let (head, body, tail) = unsafe { t.data.align_to::<T>() };
    if head.is_empty() && tail.is_empty() {
        let view = TensorRef::from_array_view((shape, body)).map_err(ort_err("input", &t.name))?;
        return Ok(view.into());
    }
    let owned: Vec<T> = t.to_vec()?;
    let tensor = OrtTensor::from_array((shape, owned)).map_err(ort_err("input", &t.name))?;
    Ok(tensor.into())
}

/// Wraps a Kiln input tensor (already validated against the model) as an ONNX Runtime input.
pub fn to_ort(t: &Tensor) -> Result<SessionInputValue<'_>> {
    match t.dtype {
        DataType::Fp32 => numeric::<f32>(t),
        DataType::Fp64 => numeric::<f64>(t),
        DataType::Int8 => numeric::<i8>(t),
        DataType::Int16 => numeric::<i16>(t),
        DataType::Int32 => numeric::<i32>(t),
        DataType::Int64 => numeric::<i64>(t),
        DataType::Uint8 => numeric::<u8>(t),
        DataType::Uint16 => numeric::<u16>(t),
        DataType::Uint32 => numeric::<u32>(t),
        DataType::Uint64 => numeric::<u64>(t),
        DataType::Fp16 => {
            let owned: Vec<half::f16> = t.to_vec()?;
            let tensor = OrtTensor::from_array((t.shape.clone(), owned))
                .map_err(ort_err("input", &t.name))?;
            Ok(tensor.into())
        }
        DataType::Bool => {
            // any non-zero byte is true; a Rust bool may only hold 0 or 1
            let owned: Vec<bool> = t.data.iter().map(|&b| b != 0).collect();
            let tensor = OrtTensor::from_array((t.shape.clone(), owned))
                .map_err(ort_err("input", &t.name))?;
            Ok(tensor.into())
        }
        DataType::Bytes => Ok(string_tensor(t)?.into()),
    }
}

/// Turns the status of an ONNX Runtime C call into an error on `what`.
///
/// # Safety
/// `status` must be the status a C API call just returned (null or owned by the caller).
unsafe fn check(status: ort::sys::OrtStatusPtr, what: &str) -> Result<()> {
    // SAFETY: the caller passes a fresh status, which this call takes over and releases.
    unsafe { ort::Error::result_from_status(status) }
        .map_err(|e| Error::invalid(format!("{what}: {e}")))
}

/// A string tensor holding `t`'s `BYTES` elements exactly: each element is written with its
/// length (ONNX Runtime keeps `std::string`s), so NUL bytes and bytes that are not UTF-8 reach
/// the model unchanged. `from_string_array` would stop at a NUL (C strings).
fn string_tensor(t: &Tensor) -> Result<OrtTensor<String>> {
    let elems = t.byte_elements()?;
    let empty = vec![""; elems.len()];
    let mut tensor = OrtTensor::from_string_array((t.shape.clone(), empty.as_slice()))
        .map_err(ort_err("input", &t.name))?;
    let what = format!("input '{}'", t.name);
    for (i, e) in elems.iter().enumerate().filter(|(_, e)| !e.is_empty()) {
        let mut buf: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: the tensor is a live string tensor of `elems.len()` elements and `i` is in
        // range; ONNX Runtime resizes element `i` to `e.len()` bytes and hands back its buffer,
        // which is valid for that many bytes until the tensor changes again.
        unsafe {
            let status = (ort::api().GetResizedStringTensorElementBuffer)(
                tensor.ptr_mut(),
                i,
                e.len(),
                &mut buf,
            );
            check(status, &what)?;
            if buf.is_null() {
                return Err(Error::internal(format!(
                    "{what}: no buffer for element {i}"
                )));
            }
            std::ptr::copy_nonoverlapping(e.as_ptr(), buf.cast::<u8>(), e.len());
        }
    }
    Ok(tensor)
}

/// The elements of a string output as `BYTES` (each a 4-byte length, then its bytes), read
/// with their lengths so that any byte survives.
fn string_output(name: &str, v: &DynValue, count: usize) -> Result<Vec<u8>> {
    let what = format!("output '{name}'");
    let mut total = 0usize;
    // SAFETY: `v` is a live string tensor; the call writes one usize.
    unsafe {
        check(
            (ort::api().GetStringTensorDataLength)(v.ptr(), &mut total),
            &what,
        )?
    };
    let mut content = vec![0u8; total];
    let mut offsets = vec![0usize; count + 1];
    if count > 0 {
        // SAFETY: `content` holds `total` bytes and `offsets` at least `count` entries, the
        // sizes ONNX Runtime was told.
        unsafe {
            let status = (ort::api().GetStringTensorContent)(
                v.ptr(),
                content.as_mut_ptr().cast(),
                total,
                offsets.as_mut_ptr(),
                count,
            );
            check(status, &what)?;
        }
    }
    offsets[count] = total;
    let mut out = Vec::with_capacity(total + 4 * count);
    for w in offsets.windows(2) {
        let elem = content.get(w[0]..w[1]).ok_or_else(|| {
            Error::internal(format!("{what}: string offsets out of order ({w:?})"))
        })?;
        out.extend_from_slice(&(elem.len() as u32).to_le_bytes());
        out.extend_from_slice(elem);
    }
    Ok(out)
}

fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: T is a plain numeric type without padding; the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Copies an ONNX Runtime output into a Kiln tensor named `name`.
pub fn from_ort(name: &str, v: &DynValue) -> Result<Tensor> {
    let internal = |e: ort::Error| Error::internal(format!("output '{name}': {e}"));
    let (ty, shape) = match v.dtype() {
        ort::value::ValueType::Tensor { ty, shape, .. } => (*ty, shape),
        other => {
            return Err(Error::internal(format!(
                "output '{name}' is not a tensor but {other}"
            )))
        }
    };
    let dtype = kiln_dtype(ty)
        .ok_or_else(|| Error::internal(format!("output '{name}' has unsupported type {ty}")))?;
    macro_rules! copy {
        ($t:ty) => {{
            let (s, data) = v.try_extract_tensor::<$t>().map_err(internal)?;
            (s.to_vec(), bytes_of(data).to_vec())
        }};
    }
    let (shape, data): (Vec<i64>, Vec<u8>) = match dtype {
        DataType::Bool => copy!(bool),
        DataType::Uint8 => copy!(u8),
        DataType::Uint16 => copy!(u16),
        DataType::Uint32 => copy!(u32),
        DataType::Uint64 => copy!(u64),
        DataType::Int8 => copy!(i8),
        DataType::Int16 => copy!(i16),
        DataType::Int32 => copy!(i32),
        DataType::Int64 => copy!(i64),
        DataType::Fp16 => copy!(half::f16),
        DataType::Fp32 => copy!(f32),
        DataType::Fp64 => copy!(f64),
        DataType::Bytes => {
            let shape = shape.to_vec();
            let count = shape.iter().map(|&d| d.max(0) as usize).product();
            let out = string_output(name, v, count)?;
            (shape, out)
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data: data.into(),
    })
}
