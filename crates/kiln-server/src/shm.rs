//! The table of registered system shared-memory regions (Triton's system shared-memory
//! extension; what a request says about a region, [`ShmRef`], is parsed by the protocol crate).
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

use bytes::Bytes;
use kiln_core::{texts, Error, ErrorCode, Result};
use kiln_protocol::shm::ShmRef;
use kiln_protocol::WireRequest;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

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
                "{} ({what}: {} bytes at offset {}, the region holds {} bytes)",
                texts::shm_out_of_bounds(&r.region),
                r.byte_size,
                r.offset,
                self.status.byte_size
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
                "{}; unregister it first",
                texts::shm_already_registered(name)
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
                "{}; unregister it first",
                texts::shm_already_registered(name)
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
    pub fn resolve_inputs(&self, req: &mut WireRequest) -> Result<()> {
        req.fill_shm_inputs(|r, what| self.read(r, what))
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
    Error::invalid(texts::shm_unknown_region(name))
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
#[path = "shm_tests.rs"]
mod tests;
