//! The ONNX backends of the built `kiln serve`: with `--default-onnx-backend auto` (the default)
//! ONNX models go to onnxruntime when its library loads and to tract otherwise; a model that asks
//! for onnxruntime without the library fails alone, with a message saying how to get it, while
//! the other models serve.
//!
//! The onnxruntime half needs the library (`scripts/setup-python.sh` puts it in `.venv`); without
//! it that half is skipped with a message, except when `CI` is set.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A repository with `mlp` (no backend named) and `ranker_ort` (backend = "onnxruntime").
fn mixed_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("models");
    let examples = repo_root().join("examples/models");
    for (from, to, head) in [
        ("mlp", "mlp", ""),
        ("ranker", "ranker_ort", "backend = \"onnxruntime\"\n"),
    ] {
        fs::create_dir_all(repo.join(to).join("1")).unwrap();
        fs::copy(
            examples.join(from).join("1/model.onnx"),
            repo.join(to).join("1/model.onnx"),
        )
        .unwrap();
        let config = fs::read_to_string(examples.join(from).join("config.toml")).unwrap();
        fs::write(repo.join(to).join("config.toml"), format!("{head}{config}")).unwrap();
    }
    repo
}

#[test]
fn without_the_library_tract_serves_and_onnxruntime_models_say_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = mixed_repo(tmp.path());
    let server = serve(
        &repo,
        tmp.path(),
        &["--ort-library", "/nonexistent/libonnxruntime.so.1.32.0"],
    );
    assert_eq!(http(server.http, "GET", "/v2/models/mlp/ready", "").0, 200);
    let (_, config) = http(server.http, "GET", "/v2/models/mlp/config", "");
    assert!(config.contains("\"platform\":\"tract_onnx\""), "{config}");
    assert_ne!(
        http(server.http, "GET", "/v2/models/ranker_ort/ready", "").0,
        200
    );
    let (_, index) = http(server.http, "POST", "/v2/repository/index", "");
    assert!(
        index.contains("pip install onnxruntime==1.32.0") && index.contains("--ort-library"),
        "{index}"
    );
}

#[cfg(feature = "ort")]
#[test]
fn with_the_library_onnx_models_default_to_onnxruntime() {
    let Some(lib) = venv_library("onnxruntime serve test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = mixed_repo(tmp.path());
    let server = serve(&repo, tmp.path(), &["--ort-library", lib.to_str().unwrap()]);
    for model in ["mlp", "ranker_ort"] {
        assert_eq!(
            http(server.http, "GET", &format!("/v2/models/{model}/ready"), "").0,
            200,
            "{model}"
        );
        let (_, config) = http(
            server.http,
            "GET",
            &format!("/v2/models/{model}/config"),
            "",
        );
        assert!(
            config.contains("\"platform\":\"onnxruntime_onnx\""),
            "{config}"
        );
        assert!(
            config.contains("\"execution_provider\":{\"string_value\":\"cpu\"}"),
            "{config}"
        );
    }
    drop(server);
    // --default-onnx-backend tract overrides auto
    let server = serve(
        &repo,
        tmp.path(),
        &[
            "--ort-library",
            lib.to_str().unwrap(),
            "--default-onnx-backend",
            "tract",
        ],
    );
    let (_, config) = http(server.http, "GET", "/v2/models/mlp/config", "");
    assert!(config.contains("\"platform\":\"tract_onnx\""), "{config}");
}
