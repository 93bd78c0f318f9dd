//! Triton's system shared-memory extension: a client creates a POSIX shared-memory object,
//! registers a region of it under a name, and then sends inputs or receives outputs through
//! the region instead of the request and response bodies.
//!
//! [`Regions`] is the server's table of registered regions. A region is mapped once, when it is
//! registered, and each input read from it is a zero-copy view that keeps the mapping alive
//! (so unregistering a region while a request uses it is safe). Outputs are copied into their
//! region after the model has run.
//!
//! Trust: a client that may register regions can make the server map any shared-memory object
//! it can open, and a client that shrinks an object after registering it can crash the server
//! (reads past the end of a mapped file fault). This is why Triton, and Kiln, accept
//! registrations only when the server was started to allow them.

use crate::request::{check_raw_data, InferRequest};
use bytes::Bytes;
use kiln_core::{Error, ErrorCode, Result};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
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

/// One registered region, mapped read-write.
struct Region {
    status: RegionStatus,
    map: memmap2::MmapRaw,
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
}

/// A view of part of a mapped region that keeps the mapping alive.
struct View {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: start + len lies inside the mapping (checked by `Region::range`), which lives
        // as long as `self.region`. The client may write to the memory while the server reads
        // it; the protocol makes that the client's error (it must not touch a region until the
        // response arrives), and it cannot make the read fault.
        unsafe { std::slice::from_raw_parts(self.region.map.as_ptr().add(self.start), self.len) }
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

    /// Maps `byte_size` bytes at `offset` of the shared-memory object `key` as region `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<()> {
        self.check_allowed()?;
        if name.is_empty() {
            return Err(Error::invalid("shared memory region: the name is empty"));
        }
        if byte_size == 0 {
            return Err(Error::invalid(format!(
                "shared memory region '{name}': byte_size must be positive"
            )));
        }
        if self.regions.read().contains_key(name) {
            return Err(Error::invalid(format!(
                "shared memory region '{name}' is already registered; unregister it first"
            )));
        }
        let file = open_shm(key).map_err(|e| {
            Error::invalid(format!(
                "shared memory region '{name}': cannot open shared memory object '{key}': {e}"
            ))
        })?;
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
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(byte_size as usize)
            .map_raw(&file)
            .map_err(|e| {
                Error::invalid(format!(
                    "shared memory region '{name}': cannot map object '{key}': {e}"
                ))
            })?;
        let region = Arc::new(Region {
            status: RegionStatus {
                name: name.to_string(),
                key: key.to_string(),
                offset,
                byte_size,
            },
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

    /// The bytes `r` names, for the tensor `what` (named in errors only); a view of the region,
    /// not a copy.
    pub fn read(&self, r: &ShmRef, what: &dyn Display) -> Result<Bytes> {
        let region = self.get(&r.region)?;
        let (start, len) = region.range(r, what)?;
        Ok(Bytes::from_owner(View { region, start, len }))
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
        // SAFETY: start + data.len() <= start + len lies inside the mapping, which `region`
        // keeps alive; the source is a separate heap buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                region.map.as_mut_ptr().add(start),
                data.len(),
            );
        }
        Ok(())
    }
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
