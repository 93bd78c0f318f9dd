//! What the OpenVINO backend's tests share: the backend with its library loaded, or a visible
//! skip (a failure under CI).

use kiln_backend_openvino::OpenVinoBackend;

/// The OpenVINO backend with its library loaded, or `None` after saying on stderr why the test
/// is skipped. Panics instead when `CI` is set: CI installs the library.
pub fn openvino_backend() -> Option<OpenVinoBackend> {
    let found = kiln_testkit::openvino_library_path().and_then(|path| {
        let backend = OpenVinoBackend::new(Some(path));
        backend.probe().map(|_| backend)
    });
    match found {
        Ok(b) => Some(b),
        Err(why) => {
            kiln_testkit::skip("openvino test", format!("library absent: {why}"));
            None
        }
    }
}
