//! The OpenVINO backend of `kiln serve` (cargo feature `openvino`, on by default): registered
//! next to the others, for models whose config says `backend = "openvino"`.
//!
//! The OpenVINO C library is `--openvino-library` (`KILN_OPENVINO_LIBRARY`), else the one in a
//! Python `openvino` package, found here: the interpreters `$KILN_PYTHON`, `./.venv/bin/python`
//! (relative to the working directory) and `python3` are asked, in order, where the package
//! lives, and its `libs/libopenvino_c.so.*` is used. Without a library the backend is still
//! registered: its models fail to load with a message naming the flag, and the others serve.

use kiln_runtime::Backends;
use std::path::PathBuf;

/// Registers the OpenVINO backend in `backends`, with the library of `library`
/// (`--openvino-library`) or the Python `openvino` package's.
pub fn register(backends: &mut Backends, library: Option<PathBuf>) -> anyhow::Result<()> {
    #[cfg(feature = "openvino")]
    {
        let backend = openvino_backend(library);
        match backend.probe() {
            Ok(path) => tracing::info!(library = %path.display(), "openvino available"),
            Err(why) => tracing::info!(reason = %why,
                "openvino not available; models with backend = \"openvino\" will fail to load"),
        }
        backends.register(std::sync::Arc::new(backend));
        Ok(())
    }
    #[cfg(not(feature = "openvino"))]
    {
        let _ = backends;
        match library {
            Some(p) => anyhow::bail!(
                "--openvino-library {}: this kiln was built without the `openvino` feature",
                p.display()
            ),
            None => Ok(()),
        }
    }
}

/// The OpenVINO backend with the library of `--openvino-library`, else the Python `openvino`
/// package's.
#[cfg(feature = "openvino")]
fn openvino_backend(library: Option<PathBuf>) -> kiln_backend_openvino::OpenVinoBackend {
    use kiln_backend_openvino::OpenVinoBackend;
    if library.is_some() {
        return OpenVinoBackend::new(library);
    }
    let found = crate::pylib::first(|python| {
        let libs = crate::pylib::package_dir(python, "openvino")?.join("libs");
        kiln_backend_openvino::library::library_in(&libs)
            .ok_or_else(|| format!("no openvino library in {}", libs.display()))
    });
    match found {
        Ok((path, python)) => {
            let how = format!("the openvino package of {}", python.display());
            OpenVinoBackend::found(path, how)
        }
        Err(tried) => {
            tracing::debug!(%tried, "no python openvino package");
            OpenVinoBackend::new(None)
        }
    }
}
