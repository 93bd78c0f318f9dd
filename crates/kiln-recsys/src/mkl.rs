//! Intel MKL, loaded at run time: the handful of CBLAS functions the dense layers use.
//!
//! Nothing is linked or downloaded at build time. [`Mkl::load`] opens `libmkl_rt.so*` (the
//! single dynamic library of MKL, which loads its computational and threading layers from its
//! own directory) at the path the caller found (`kiln serve` finds it: see the binary's
//! `mkl.rs`), selects the LP64 interface (32-bit `MKL_INT`) and the sequential threading layer,
//! and resolves the functions below.
//!
//! Threading: MKL runs sequentially, one call on one thread. A recsys model already splits a
//! batch into row ranges, one per instance thread, and each thread runs the whole forward pass
//! of its rows ([`crate::model`]); MKL threads under those would oversubscribe the cores. The
//! threading layer is a process-wide setting fixed by MKL's first call, so it is set before any
//! other: a process that used MKL with another threading layer first keeps it (and the load
//! reports it in [`Mkl::threading`]).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};

/// `CblasRowMajor`.
pub(crate) const ROW_MAJOR: c_int = 101;
/// `CblasNoTrans`.
pub(crate) const NO_TRANS: c_int = 111;
/// `CblasPacked` (a `cblas_*_compute` operand packed by `cblas_*_pack`).
pub(crate) const PACKED: c_int = 151;
/// `CblasBMatrix` (the identifier of the right-hand operand to pack).
pub(crate) const B_MATRIX: c_int = 162;
/// `MKL_THREADING_SEQUENTIAL`.
const THREADING_SEQUENTIAL: c_int = 1;
/// `MKL_INTERFACE_LP64`.
const INTERFACE_LP64: c_int = 0;

type PackGetSize = unsafe extern "C" fn(c_int, c_int, c_int, c_int) -> usize;
type SgemmPack = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *mut f32,
);
type SgemmCompute = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type Bf16Pack =
    unsafe extern "C" fn(c_int, c_int, c_int, c_int, c_int, c_int, *const u16, c_int, *mut u16);
type Bf16Compute = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const u16,
    c_int,
    *const u16,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// The loaded library and its functions. The functions stay valid while this value lives; the
/// packed weights of a model hold an `Arc` of it.
pub struct Mkl {
    path: PathBuf,
    version: String,
    threading: c_int,
    pub(crate) sgemm_pack_get_size: PackGetSize,
    pub(crate) sgemm_pack: SgemmPack,
    pub(crate) sgemm_compute: SgemmCompute,
    pub(crate) bf16_pack_get_size: PackGetSize,
    pub(crate) bf16_pack: Bf16Pack,
    pub(crate) bf16_compute: Bf16Compute,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Mkl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mkl")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

/// Why MKL could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MklError(pub String);

impl std::fmt::Display for MklError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MklError {}

impl Mkl {
    /// Opens `libmkl_rt` at `path`, sets the LP64 interface and the sequential threading layer,
    /// and resolves the functions.
    pub fn load(path: &Path) -> Result<Self, MklError> {
        let err = |m: String| MklError(format!("MKL library {}: {m}", path.display()));
        // SAFETY: loading runs the library's initialisers; libmkl_rt's only set up its dispatch
        // tables. The library stays loaded while `_lib` (held with the function pointers) lives.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
        // SAFETY (each `get`): the types are the C prototypes of mkl_cblas.h / mkl_service.h
        // with MKL_INT = int (LP64, selected below before any computational call).
        unsafe {
            let set_interface: libloading::Symbol<unsafe extern "C" fn(c_int) -> c_int> = lib
                .get(b"MKL_Set_Interface_Layer\0")
                .map_err(|e| err(e.to_string()))?;
            if set_interface(INTERFACE_LP64) != INTERFACE_LP64 {
                return Err(err(
                    "the LP64 interface layer could not be selected (MKL_INTERFACE_LAYER?)".into(),
                ));
            }
            let set_threading: libloading::Symbol<unsafe extern "C" fn(c_int) -> c_int> = lib
                .get(b"MKL_Set_Threading_Layer\0")
                .map_err(|e| err(e.to_string()))?;
            let threading = set_threading(THREADING_SEQUENTIAL);
            let version: libloading::Symbol<unsafe extern "C" fn(*mut c_char, c_int)> = lib
                .get(b"MKL_Get_Version_String\0")
                .map_err(|e| err(e.to_string()))?;
            let mut buf = [0 as c_char; 256];
            version(buf.as_mut_ptr(), buf.len() as c_int);
            buf[255] = 0;
            let version = CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .trim()
                .to_string();
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| err(e.to_string()))?
                };
            }
            Ok(Mkl {
                path: path.to_path_buf(),
                version,
                threading,
                sgemm_pack_get_size: sym!("cblas_sgemm_pack_get_size"),
                sgemm_pack: sym!("cblas_sgemm_pack"),
                sgemm_compute: sym!("cblas_sgemm_compute"),
                bf16_pack_get_size: sym!("cblas_gemm_bf16bf16f32_pack_get_size"),
                bf16_pack: sym!("cblas_gemm_bf16bf16f32_pack"),
                bf16_compute: sym!("cblas_gemm_bf16bf16f32_compute"),
                _lib: lib,
            })
        }
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// MKL's version string (`MKL_Get_Version_String`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version number alone (`2026.2`), or the whole string when it has none.
    pub fn version_number(&self) -> &str {
        self.version
            .split_once("Version ")
            .and_then(|(_, v)| v.split(['-', ' ']).next())
            .filter(|v| !v.is_empty())
            .unwrap_or(&self.version)
    }

    /// The threading layer in effect: `"sequential"`, or the one an earlier user of MKL in this
    /// process fixed.
    pub fn threading(&self) -> &'static str {
        match self.threading {
            0 => "intel (OpenMP)",
            1 => "sequential",
            2 => "pgi",
            3 => "gnu (OpenMP)",
            4 => "tbb",
            _ => "unknown",
        }
    }
}

/// A 64-byte aligned buffer holding a packed operand.
pub(crate) struct PackedBuf {
    ptr: *mut c_void,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain memory, written once when packed and only read afterwards.
unsafe impl Send for PackedBuf {}
// SAFETY: as above.
unsafe impl Sync for PackedBuf {}

impl PackedBuf {
    /// A zeroed buffer of `bytes` bytes (at least 64).
    pub(crate) fn new(bytes: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(bytes.max(64), 64).expect("packed size");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut c_void;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        PackedBuf { ptr, layout }
    }

    pub(crate) fn as_ptr<T>(&self) -> *const T {
        self.ptr as *const T
    }

    pub(crate) fn as_mut_ptr<T>(&mut self) -> *mut T {
        self.ptr as *mut T
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for PackedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr as *mut u8, self.layout) }
    }
}
