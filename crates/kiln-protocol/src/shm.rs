//! Triton's system shared-memory extension: a client creates a POSIX shared-memory object,
//! registers a region of it under a name, and then sends inputs or receives outputs through
//! the region instead of the request and response bodies.
//!
//! [`Regions`] is the server's table of registered regions. Each region keeps the object's
//! file descriptor. No client action on its own object can crash the server:
//!
//! - An object that may still shrink (every `shm_open` object: they cannot be sealed) is read
//!   with `pread` into an owned buffer and written with `pwrite`, never through a mapping: a
//!   read past the end of a mapped file raises SIGBUS, which kills the process, while `pread`
//!   past the end returns short, which is answered as a 400 naming the region.
//! - An object sealed against shrinking (`F_SEAL_SHRINK`, e.g. a memfd handed over with
//!   [`Regions::register_file`]) is mapped once at registration, and each input read from it is
//!   a zero-copy view that keeps the mapping alive (so unregistering a region while a request
//!   uses it is safe).
//!
//! Trust: a client that may register regions can make the server open any shared-memory
//! object it can open. This is why Triton, and Kiln, accept registrations only when the server
//! was started to allow them.

use crate::request::{check_raw_data, InferRequest};
use bytes::Bytes;
use kiln_core::{Error, ErrorCode, Result};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

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

/// The status of one registered region, as the status calls report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    /// Region name.
    pub name: String,
    /// Key of the shared-memory object (`shm_open` name, e.g. `/input0`).
    pub key: String,
    /// Offset of the region in the object.
    pub offset: u64,
    /// Size of the region.
    pub byte_size: u64,
}

/// One registered region.
struct Region {
    status: RegionStatus,
    /// The object, read and written with `pread` / `pwrite` unless `map` is set.
    file: File,
    /// A read-write mapping of the region, only for objects sealed against shrinking.
    map: Option<memmap2::MmapRaw>,
}

impl Region {
    /// Bounds check of `r` against this region, for the tensor `what`.
    fn range(&self, r: &ShmRef, what: &dyn Display) -> Result<(usize, usize)> {
        let end = r.offset.checked_add(r.byte_size);
        match end {
            Some(end) if end <= self.status.byte_size => {
                Ok((r.offset as usize, r.byte_size as usize))
            }
            _ => Err(Error::invalid(format!(
                "{what}: {} bytes at offset {} run past the end of shared memory region '{}' \
                 ({} bytes)",
                r.byte_size, r.offset, r.region, self.status.byte_size
            ))),
        }
    }

    /// The refusal when the object no longer holds `len` bytes at region offset `start`.
    fn shrunk(&self, what: &dyn Display, start: usize, len: usize) -> Error {
        let now = self
            .file
            .metadata()
            .map(|m| m.len().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Error::invalid(format!(
            "{what}: shared memory region '{}' no longer holds {len} bytes at offset {start}: \
             object '{}' was shrunk to {now} bytes after it was registered ({} bytes from \
             offset {}); register the region again",
            self.status.name,
            self.status.key,
            self.status.offset + self.status.byte_size,
            self.status.offset
        ))
    }

    /// Offset in the object of region offset `start`.
    fn at(&self, start: usize) -> u64 {
        self.status.offset + start as u64
    }
}

/// A view of part of a mapped region that keeps the mapping alive.
struct View {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        let Some(map) = &self.region.map else {
            return &[]; // never built without a mapping (see `Regions::read`)
        };
        // SAFETY: start + len lies inside the mapping (checked by `Region::range`), which lives
        // as long as `self.region`, of an object sealed against shrinking (checked at
        // registration), so every mapped page stays backed. The client may write to the memory
        // while the server reads it; the protocol makes that the client's error (it must not
        // touch a region until the response arrives), and it cannot make the read fault.
        unsafe { std::slice::from_raw_parts(map.as_ptr().add(self.start), self.len) }
    }
}

/// The registered system shared-memory regions of a server.
pub struct Regions {
    allowed: bool,
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
}

impl Regions {
    /// An empty table; `allowed` says whether clients may register regions at all.
    pub fn new(allowed: bool) -> Self {
        Regions {
            allowed,
            regions: RwLock::new(BTreeMap::new()),
        }
    }

    /// Whether clients may register regions.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    fn check_allowed(&self) -> Result<()> {
        if self.allowed {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Unsupported,
                "system shared memory is disabled on this server; start it with \
                 --allow-client-shm to let clients register regions",
            ))
        }
    }

    /// Registers `byte_size` bytes at `offset` of the shared-memory object `key` (a
    /// `shm_open` name) as region `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<()> {
        self.check_allowed()?;
        check_name(name, byte_size)?;
        let file = open_shm(key).map_err(|e| {
            Error::invalid(format!(
                "shared memory region '{name}': cannot open shared memory object '{key}': {e}"
            ))
        })?;
        self.register_file(name, key, file, offset, byte_size)
    }

    /// Registers `byte_size` bytes at `offset` of the open object `file` as region `name`;
    /// `key` is what status calls report for it. A file sealed against shrinking
    /// (`F_SEAL_SHRINK`, as a sealed memfd is) is mapped and read without copies; any other
    /// is read and written through its descriptor.
    pub fn register_file(
        &self,
        name: &str,
        key: &str,
        file: File,
        offset: u64,
        byte_size: u64,
    ) -> Result<()> {
        self.check_allowed()?;
        check_name(name, byte_size)?;
        if self.regions.read().contains_key(name) {
            return Err(Error::invalid(format!(
                "shared memory region '{name}' is already registered; unregister it first"
            )));
        }
        let size = file
            .metadata()
            .map_err(|e| Error::internal(format!("shared memory object '{key}': {e}")))?
            .len();
        if offset.checked_add(byte_size).is_none_or(|end| end > size) {
            return Err(Error::invalid(format!(
                "shared memory region '{name}': {byte_size} bytes at offset {offset} run past \
                 the end of shared memory object '{key}' ({size} bytes)"
            )));
        }
        let map = if sealed_against_shrinking(&file) {
            let map = memmap2::MmapOptions::new()
                .offset(offset)
                .len(byte_size as usize)
                .map_raw(&file)
                .map_err(|e| {
                    Error::invalid(format!(
                        "shared memory region '{name}': cannot map object '{key}': {e}"
                    ))
                })?;
            Some(map)
        } else {
            None
        };
        let mapped = map.is_some();
        let region = Arc::new(Region {
            status: RegionStatus {
                name: name.to_string(),
                key: key.to_string(),
                offset,
                byte_size,
            },
            file,
            map,
        });
        let mut regions = self.regions.write();
        if regions.contains_key(name) {
            return Err(Error::invalid(format!(
                "shared memory region '{name}' is already registered; unregister it first"
            )));
        }
        regions.insert(name.to_string(), region);
        tracing::debug!(
            region = name,
            key,
            offset,
            byte_size,
            mapped,
            "shared memory registered"
        );
        Ok(())
    }

    /// Unregisters region `name`, or every region when `name` is `None`. Unregistering a name
    /// that is not registered is not an error. Requests already using a region keep its
    /// mapping until they finish.
    pub fn unregister(&self, name: Option<&str>) -> Result<()> {
        self.check_allowed()?;
        let mut regions = self.regions.write();
        match name {
            Some(n) => {
                regions.remove(n);
            }
            None => regions.clear(),
        }
        Ok(())
    }

    /// Status of region `name`, or of every region when `name` is `None`.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>> {
        let regions = self.regions.read();
        match name {
            Some(n) => regions
                .get(n)
                .map(|r| vec![r.status.clone()])
                .ok_or_else(|| unknown(n)),
            None => Ok(regions.values().map(|r| r.status.clone()).collect()),
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Region>> {
        self.regions
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| unknown(name))
    }

    /// The bytes `r` names, for the tensor `what` (named in errors only): a view of the region
    /// when it is mapped, else a copy read from the object. An object shrunk since it was
    /// registered is an [`ErrorCode::InvalidArgument`].
    pub fn read(&self, r: &ShmRef, what: &dyn Display) -> Result<Bytes> {
        let region = self.get(&r.region)?;
        let (start, len) = region.range(r, what)?;
        if region.map.is_some() {
            return Ok(Bytes::from_owner(View { region, start, len }));
        }
        let mut buf = vec![0u8; len];
        region
            .file
            .read_exact_at(&mut buf, region.at(start))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => region.shrunk(what, start, len),
                _ => Error::internal(format!(
                    "{what}: cannot read shared memory region '{}': {e}",
                    r.region
                )),
            })?;
        Ok(Bytes::from(buf))
    }

    /// Fills the data of `req`'s shared-memory inputs from their regions and checks each
    /// against its shape, as inputs from the body are checked when they are decoded.
    pub fn resolve_inputs(&self, req: &mut InferRequest) -> Result<()> {
        for (i, r) in std::mem::take(&mut req.shm_inputs) {
            let t = req
                .inputs
                .get_mut(i)
                .ok_or_else(|| Error::internal("shared-memory input index out of range"))?;
            let data = self.read(&r, &format_args!("input '{}'", t.name))?;
            check_raw_data(&t.name, t.dtype, &t.shape, &data, "shared_memory_byte_size")?;
            t.data = data;
        }
        Ok(())
    }

    /// Copies `data`, the output `what` (named in errors only), into the space `r` names, which
    /// must be large enough.
    pub fn write(&self, r: &ShmRef, data: &[u8], what: &dyn Display) -> Result<()> {
        let region = self.get(&r.region)?;
        let (start, len) = region.range(r, what)?;
        if data.len() > len {
            return Err(Error::invalid(format!(
                "{what}: needs {} bytes, but parameters.shared_memory_byte_size is {len}",
                data.len()
            )));
        }
        if let Some(map) = &region.map {
            // SAFETY: start + data.len() <= start + len lies inside the mapping, which `region`
            // keeps alive, of an object that cannot shrink; the source is a separate heap buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    map.as_mut_ptr().add(start),
                    data.len(),
                );
            }
            return Ok(());
        }
        // pwrite past the end would grow the object rather than fail: refuse a shrunk one first
        // (if it shrinks between the check and the write, the write grows it back; no fault).
        let end = region.at(start) + data.len() as u64;
        if region.file.metadata().map(|m| m.len()).unwrap_or(0) < end {
            return Err(region.shrunk(what, start, len));
        }
        region
            .file
            .write_all_at(data, region.at(start))
            .map_err(|e| {
                Error::internal(format!(
                    "{what}: cannot write shared memory region '{}': {e}",
                    r.region
                ))
            })?;
        Ok(())
    }
}

/// Checks a region's name and size.
fn check_name(name: &str, byte_size: u64) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("shared memory region: the name is empty"));
    }
    if byte_size == 0 {
        return Err(Error::invalid(format!(
            "shared memory region '{name}': byte_size must be positive"
        )));
    }
    Ok(())
}

/// Whether `file` carries `F_SEAL_SHRINK`, so that it can never become shorter than it is now.
/// Files that cannot be sealed (every `shm_open` object) answer no.
fn sealed_against_shrinking(file: &File) -> bool {
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own; it fails (EINVAL) on
    // files that do not support sealing.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

fn unknown(name: &str) -> Error {
    Error::invalid(format!(
        "unable to find system shared memory region '{name}'"
    ))
}

/// Opens the POSIX shared-memory object `key` read-write.
fn open_shm(key: &str) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(key)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "key contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned descriptor, if any, is owned
    // by the File from here on.
    let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared-memory object that is removed when dropped.
    pub(crate) struct Object(pub String);
    impl Object {
        pub(crate) fn new(tag: &str, size: usize) -> Object {
            let key = format!("/kiln-test-{tag}-{}", std::process::id());
            let c = std::ffi::CString::new(key.clone()).unwrap();
            // SAFETY: plain libc calls on a valid name; the descriptor is closed by File.
            unsafe {
                libc::shm_unlink(c.as_ptr());
                let fd = libc::shm_open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
                assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
                let f = <File as std::os::fd::FromRawFd>::from_raw_fd(fd);
                f.set_len(size as u64).unwrap();
            }
            Object(key)
        }
    }
    impl Drop for Object {
        fn drop(&mut self) {
            let c = std::ffi::CString::new(self.0.clone()).unwrap();
            // SAFETY: unlinking a name.
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
    }

    fn at(region: &str, offset: u64, byte_size: u64) -> ShmRef {
        ShmRef {
            region: region.into(),
            offset,
            byte_size,
        }
    }

    #[test]
    fn write_then_read_through_two_regions_of_one_object() {
        let obj = Object::new("rw", 8192);
        let regions = Regions::new(true);
        regions.register("a", &obj.0, 0, 4096).unwrap();
        regions.register("b", &obj.0, 4096, 4096).unwrap();
        regions
            .write(&at("b", 8, 5), b"hello", &"output 'y'")
            .unwrap();
        // region b starts 4096 bytes into the object, as the second mapping shows
        let whole = Regions::new(true);
        whole.register("all", &obj.0, 0, 8192).unwrap();
        let got = whole.read(&at("all", 4104, 5), &"input 'x'").unwrap();
        assert_eq!(&got[..], b"hello");
        // a view outlives its region's registration
        let view = regions.read(&at("b", 8, 5), &"input 'x'").unwrap();
        regions.unregister(Some("b")).unwrap();
        assert_eq!(&view[..], b"hello");
        let e = regions.read(&at("b", 0, 1), &"input 'x'").unwrap_err();
        assert!(e.message.contains("unable to find"), "{e}");
        let status = regions.status(None).unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(
            status[0],
            RegionStatus {
                name: "a".into(),
                key: obj.0.clone(),
                offset: 0,
                byte_size: 4096
            }
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let obj = Object::new("refuse", 4096);
        let regions = Regions::new(true);
        let e = regions.register("r", &obj.0, 4000, 200).unwrap_err();
        assert!(e.message.contains("run past the end"), "{e}");
        let e = regions
            .register("r", "/kiln-no-such-object", 0, 8)
            .unwrap_err();
        assert!(e.message.contains("cannot open"), "{e}");
        regions.register("r", &obj.0, 0, 1024).unwrap();
        let e = regions.register("r", &obj.0, 0, 8).unwrap_err();
        assert!(e.message.contains("already registered"), "{e}");
        let e = regions.read(&at("r", 1000, 100), &"input 'x'").unwrap_err();
        assert!(
            e.message.starts_with("input 'x': 100 bytes at offset 1000"),
            "{e}"
        );
        let e = regions
            .write(&at("r", 0, 4), &[0; 8], &"output 'y'")
            .unwrap_err();
        assert!(e.message.contains("needs 8 bytes"), "{e}");
        assert!(regions.status(Some("nope")).is_err());
        regions.unregister(Some("nope")).unwrap();
        regions.unregister(None).unwrap();
        assert!(regions.status(None).unwrap().is_empty());

        let off = Regions::new(false);
        let e = off.register("r", &obj.0, 0, 8).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert!(e.message.contains("--allow-client-shm"), "{e}");
    }

    /// A memfd of `size` bytes, sealed against shrinking when `seal`.
    pub(crate) fn memfd(size: u64, seal: bool) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: plain libc calls; the descriptor is owned by the File.
        unsafe {
            let fd = libc::memfd_create(c"kiln-test".as_ptr(), libc::MFD_ALLOW_SEALING);
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            let f = File::from_raw_fd(fd);
            f.set_len(size).unwrap();
            if seal {
                assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK), 0);
            }
            f
        }
    }

    #[test]
    fn a_shrunk_object_is_refused_not_a_fault() {
        let obj = Object::new("shrink", 8192);
        let regions = Regions::new(true);
        regions.register("r", &obj.0, 4096, 4096).unwrap();
        regions
            .write(&at("r", 0, 4), b"abcd", &"output 'y'")
            .unwrap();
        assert_eq!(
            &regions.read(&at("r", 0, 4), &"input 'x'").unwrap()[..],
            b"abcd"
        );
        // the client shrinks its object below the region
        let c = std::ffi::CString::new(obj.0.clone()).unwrap();
        // SAFETY: shm_open and ftruncate on a test object; the descriptor is closed by File.
        let f = unsafe {
            <File as std::os::fd::FromRawFd>::from_raw_fd(libc::shm_open(
                c.as_ptr(),
                libc::O_RDWR,
                0,
            ))
        };
        f.set_len(4100).unwrap();
        let e = regions.read(&at("r", 0, 64), &"input 'x'").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(
            e.message
                .contains("input 'x': shared memory region 'r' no longer holds 64 bytes"),
            "{e}"
        );
        assert!(e.message.contains("was shrunk to 4100 bytes"), "{e}");
        let e = regions
            .write(&at("r", 0, 64), &[1; 64], &"output 'y'")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(
            e.message
                .starts_with("output 'y': shared memory region 'r'"),
            "{e}"
        );
        assert_eq!(
            f.metadata().unwrap().len(),
            4100,
            "a refused write must not grow the object"
        );
        // what is still there still reads
        assert_eq!(
            &regions.read(&at("r", 0, 4), &"input 'x'").unwrap()[..],
            b"abcd"
        );
    }

    #[test]
    fn only_objects_sealed_against_shrinking_are_mapped() {
        let regions = Regions::new(true);
        let sealed = memfd(4096, true);
        let copy = sealed.try_clone().unwrap();
        regions
            .register_file("m", "memfd:sealed", copy, 0, 4096)
            .unwrap();
        sealed.write_all_at(b"one", 8).unwrap();
        let view = regions.read(&at("m", 8, 3), &"input 'x'").unwrap();
        assert_eq!(&view[..], b"one");
        // a view of a mapping sees later writes: the sealed object is read without a copy
        sealed.write_all_at(b"two", 8).unwrap();
        assert_eq!(&view[..], b"two");
        assert!(sealed.set_len(100).is_err(), "the seal forbids shrinking");
        regions
            .write(&at("m", 16, 3), b"out", &"output 'y'")
            .unwrap();
        let mut got = [0u8; 3];
        sealed.read_exact_at(&mut got, 16).unwrap();
        assert_eq!(&got, b"out");

        let unsealed = memfd(4096, false);
        regions
            .register_file("u", "memfd:open", unsealed.try_clone().unwrap(), 0, 4096)
            .unwrap();
        unsealed.write_all_at(b"one", 8).unwrap();
        let copy = regions.read(&at("u", 8, 3), &"input 'x'").unwrap();
        unsealed.write_all_at(b"two", 8).unwrap();
        assert_eq!(&copy[..], b"one", "an unsealed object is copied");
        unsealed.set_len(0).unwrap();
        let e = regions.read(&at("u", 8, 3), &"input 'x'").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn parameters_come_in_pairs() {
        let none = |_: &str| Ok(None::<String>);
        let no_int = |_: &str| Ok(None::<u64>);
        assert_eq!(
            ShmRef::from_params("input 'x'", none, no_int).unwrap(),
            None
        );
        let r = ShmRef::from_params(
            "input 'x'",
            |_| Ok(Some("r".to_string())),
            |k| Ok((k == "shared_memory_byte_size").then_some(16)),
        )
        .unwrap();
        assert_eq!(r, Some(at("r", 0, 16)));
        let e =
            ShmRef::from_params("input 'x'", |_| Ok(Some("r".to_string())), no_int).unwrap_err();
        assert!(
            e.message
                .contains("needs parameters.shared_memory_byte_size"),
            "{e}"
        );
        let e = ShmRef::from_params("output 'y'", none, |_| Ok(Some(4))).unwrap_err();
        assert!(e
            .message
            .starts_with("output 'y': parameters.shared_memory_byte_size needs"));
    }
}
