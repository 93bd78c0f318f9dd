//! Model files sent with a load request (Triton's `file:<version>/<name>` parameters): checked
//! as a whole first, then written into the model's directory, one version directory at a time,
//! each staged beside its final place and renamed into it, so that a refused request leaves the
//! repository as it was.

use kiln_core::Error;
use kiln_core::{ModelConfig, Result};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// What a load request brings besides the model's name.
#[derive(Default)]
pub struct LoadRequest {
    /// A configuration used instead of the model's configuration file (Triton's `config`
    /// parameter, already parsed), with a hash of its text for change detection.
    pub config: Option<(ModelConfig, u64)>,
    /// Files for the model's directory: `<version>/<path>` and their bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Checked files by version: their paths inside the version directory and their bytes.
pub type FilesByVersion<'a> = BTreeMap<u64, Vec<(PathBuf, &'a [u8])>>;

/// Most bytes the files of one load request may hold together.
pub const MAX_LOAD_FILE_BYTES: usize = 1 << 30;

/// The files of a load request, grouped by version, with their paths inside the version
/// directory. Refuses a path that is not `<version>/<relative path>` (a number, then names
/// without `..` or a root), a version with no file, and more than [`MAX_LOAD_FILE_BYTES`].
pub fn check_files(files: &[(String, Vec<u8>)]) -> Result<FilesByVersion<'_>> {
    let mut total = 0usize;
    let mut by_version = FilesByVersion::new();
    for (path, bytes) in files {
        total = total.saturating_add(bytes.len());
        if total > MAX_LOAD_FILE_BYTES {
            return Err(Error::invalid(format!(
                "load request: the model files are larger than {MAX_LOAD_FILE_BYTES} bytes"
            )));
        }
        let bad = || {
            Error::invalid(format!(
                "load request: parameter 'file:{}': expected 'file:<version>/<file name>' \
                 with a numeric version and a relative file path",
                path.escape_debug()
            ))
        };
        let (version, rest) = path.split_once('/').ok_or_else(bad)?;
        let version: u64 = version.parse().map_err(|_| bad())?;
        let rel = Path::new(rest);
        let plain = !rest.is_empty()
            && rel.components().all(
                |c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')),
            );
        if !plain {
            return Err(bad());
        }
        by_version
            .entry(version)
            .or_default()
            .push((rel.to_path_buf(), bytes.as_slice()));
    }
    Ok(by_version)
}

/// Writes checked files (see [`check_files`]) into `model_dir`: each version's files go to a
/// staging directory first, which then replaces `<model_dir>/<version>`.
pub fn write_files(model_dir: &Path, files: &FilesByVersion<'_>) -> Result<()> {
    let io = |what: &Path, e: std::io::Error| {
        Error::internal(format!("writing model file {}: {e}", what.display()))
    };
    std::fs::create_dir_all(model_dir).map_err(|e| io(model_dir, e))?;
    for (version, list) in files {
        let stage = model_dir.join(format!(".{version}.incoming"));
        let _ = std::fs::remove_dir_all(&stage);
        for (rel, bytes) in list {
            let p = stage.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
        }
        let dest = model_dir.join(version.to_string());
        if dest.exists() {
            let old = model_dir.join(format!(".{version}.replaced"));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&dest, &old).map_err(|e| io(&dest, e))?;
            std::fs::rename(&stage, &dest).map_err(|e| io(&dest, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&stage, &dest).map_err(|e| io(&dest, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_version_and_relative_file() {
        for bad in [
            "model.onnx",
            "x/model.onnx",
            "1/",
            "1/../x",
            "1//etc/passwd",
            "1/.hidden",
        ] {
            let files = vec![(bad.to_string(), vec![1u8])];
            assert!(check_files(&files).is_err(), "{bad}");
        }
        let files = vec![
            ("1/model.onnx".to_string(), vec![1u8]),
            ("1/sub/data.bin".to_string(), vec![2u8]),
            ("3/model.onnx".to_string(), vec![3u8]),
        ];
        let by = check_files(&files).unwrap();
        assert_eq!(by.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(by[&1].len(), 2);
    }
}
