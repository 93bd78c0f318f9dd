//! Reading a model directory's configuration: Kiln's `config.toml`, or Triton's `config.pbtxt`
//! (protobuf text format, read by [`kiln_protocol::triton_config`]). A repository may mix the
//! two; a directory holding both is refused, since either could be the one meant. Without
//! either, the model gets every default.

use kiln_core::{Error, ModelConfig, Result};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

/// Kiln's configuration file.
pub const TOML_CONFIG: &str = "config.toml";
/// Triton's configuration file.
pub const TRITON_CONFIG: &str = "config.pbtxt";

/// Reads the configuration of model `name` in `dir`, and a hash of the file's name and text
/// (which changes when the configuration does). Errors name the file relative to the
/// repository (`<name>/config.pbtxt`), as clients see them.
pub fn read_config(dir: &Path, name: &str) -> Result<(ModelConfig, u64)> {
    let toml_path = dir.join(TOML_CONFIG);
    let pbtxt_path = dir.join(TRITON_CONFIG);
    let (file, config, text) = match (toml_path.is_file(), pbtxt_path.is_file()) {
        (true, true) => {
            return Err(Error::invalid(format!(
                "{name}: both {TOML_CONFIG} and {TRITON_CONFIG} are present; keep one"
            )))
        }
        (true, false) => {
            let shown = format!("{name}/{TOML_CONFIG}");
            let text = read(&toml_path, &shown)?;
            let c = ModelConfig::parse(&text, name)
                .map_err(|e| Error::invalid(format!("{shown}: {}", e.message)))?;
            (TOML_CONFIG, c, text)
        }
        (false, true) => {
            let shown = format!("{name}/{TRITON_CONFIG}");
            let text = read(&pbtxt_path, &shown)?;
            let c = kiln_protocol::triton_config::read(&text, &shown, name)?;
            (TRITON_CONFIG, c, text)
        }
        (false, false) => ("", ModelConfig::default_for(name), String::new()),
    };
    let mut config = config;
    kiln_core::classification::read_labels(&mut config, dir)?;
    let mut h = DefaultHasher::new();
    file.hash(&mut h);
    text.hash(&mut h);
    Ok((config, h.finish()))
}

fn read(path: &Path, shown: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::invalid(format!("{shown}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("temporary directory");
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).expect("write config");
        }
        d
    }

    #[test]
    fn reads_either_file_and_refuses_both() {
        let d = dir_with(&[(TOML_CONFIG, "max_batch_size = 4")]);
        let (c, toml_hash) = read_config(d.path(), "m").unwrap();
        assert_eq!(c.max_batch_size, 4);

        let d = dir_with(&[(TRITON_CONFIG, "max_batch_size: 4")]);
        let (c, pbtxt_hash) = read_config(d.path(), "m").unwrap();
        assert_eq!(c.max_batch_size, 4);
        assert_ne!(toml_hash, pbtxt_hash);

        let d = dir_with(&[(TOML_CONFIG, ""), (TRITON_CONFIG, "")]);
        let e = read_config(d.path(), "m").unwrap_err();
        assert!(
            e.message.contains("both config.toml and config.pbtxt"),
            "{e}"
        );

        let d = dir_with(&[(TRITON_CONFIG, "max_batch_size: 4\nsequence_batching {}")]);
        let e = read_config(d.path(), "m").unwrap_err();
        assert!(
            e.message.starts_with("m/config.pbtxt: sequence_batching"),
            "{e}"
        );

        let d = dir_with(&[]);
        let (c, _) = read_config(d.path(), "m").unwrap();
        assert_eq!(c, ModelConfig::default_for("m"));
    }
}
