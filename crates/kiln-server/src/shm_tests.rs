//! Unit tests of the shared-memory region table: reads and writes through regions, refusals,
//! shrunk objects (a 400, never a fault) and which objects are mapped.

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
    assert!(
        e.message.contains("Unable to find shared memory region"),
        "{e}"
    );
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
    assert!(e.message.contains("already in manager"), "{e}");
    let e = regions.read(&at("r", 1000, 100), &"input 'x'").unwrap_err();
    assert!(
        e.message
            .starts_with("Invalid offset + byte size for shared memory region: 'r' (input 'x': 100 bytes at offset 1000"),
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
        <File as std::os::fd::FromRawFd>::from_raw_fd(libc::shm_open(c.as_ptr(), libc::O_RDWR, 0))
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
