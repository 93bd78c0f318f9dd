//! The OpenVINO backend in the built `kiln serve`: models with `backend = "openvino"` (an ONNX
//! file and an OpenVINO IR) serve when the library loads; without it they fail alone, with a
//! message naming the flag and the environment variable, while the tract model serves.
//!
//! The served half needs the library (`scripts/setup-python.sh` puts it in `.venv`); without it
//! that half is skipped with a message, except when `CI` is set.

#![cfg(feature = "openvino")]

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A repository with `mlp` (tract), `mlp_ov` (the same ONNX file on openvino) and `ranker_ir`
/// (OpenVINO IR, tests/openvino/models).
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("models");
    let examples = repo_root().join("examples/models");
    for (to, head) in [
        ("mlp", "backend = \"tract\"\n"),
        ("mlp_ov", "backend = \"openvino\"\n"),
    ] {
        fs::create_dir_all(repo.join(to).join("1")).unwrap();
        fs::copy(
            examples.join("mlp/1/model.onnx"),
            repo.join(to).join("1/model.onnx"),
        )
        .unwrap();
        let config = fs::read_to_string(examples.join("mlp/config.toml")).unwrap();
        fs::write(repo.join(to).join("config.toml"), format!("{head}{config}")).unwrap();
    }
    let ir = repo_root().join("tests/openvino/models/ranker_ir");
    fs::create_dir_all(repo.join("ranker_ir/1")).unwrap();
    for f in ["config.toml", "1/model.xml", "1/model.bin"] {
        fs::copy(ir.join(f), repo.join("ranker_ir").join(f)).unwrap();
    }
    repo
}

fn ready(port: u16, model: &str) -> u16 {
    http(port, "GET", &format!("/v2/models/{model}/ready"), "").0
}

#[test]
fn without_the_library_openvino_models_say_how_to_get_it_and_tract_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path());
    let server = serve(
        &repo,
        tmp.path(),
        &["--openvino-library", "/nonexistent/libopenvino_c.so.2641"],
    );
    assert_eq!(ready(server.http, "mlp"), 200);
    for model in ["mlp_ov", "ranker_ir"] {
        assert_ne!(ready(server.http, model), 200, "{model}");
    }
    let (_, index) = http(server.http, "POST", "/v2/repository/index", "");
    for needle in [
        "pip install openvino==2026.4.1",
        "--openvino-library",
        "KILN_OPENVINO_LIBRARY",
    ] {
        assert!(index.contains(needle), "{needle}: {index}");
    }
}

#[test]
fn with_the_library_onnx_and_ir_models_serve() {
    let Some(lib) = kiln_testkit::openvino_library("openvino serve test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path());
    let server = serve(
        &repo,
        tmp.path(),
        &["--openvino-library", lib.to_str().unwrap()],
    );
    for model in ["mlp", "mlp_ov", "ranker_ir"] {
        assert_eq!(ready(server.http, model), 200, "{model}");
    }
    let (_, config) = http(server.http, "GET", "/v2/models/ranker_ir/config", "");
    assert!(config.contains("openvino"), "{config}");
    let x = vec!["0.25"; 2 * 256].join(",");
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[2,256],\"data\":[{x}]}}]}}"
    );
    let (tract_status, tract) = http(server.http, "POST", "/v2/models/mlp/infer", &body);
    let (ov_status, ov) = http(server.http, "POST", "/v2/models/mlp_ov/infer", &body);
    assert_eq!((tract_status, ov_status), (200, 200), "{tract} {ov}");
    let ys = |text: &str| -> Vec<f64> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for (a, b) in ys(&tract).iter().zip(ys(&ov)) {
        assert!((a - b).abs() < 1e-4, "tract {a}, openvino {b}");
    }
    let ids = "1,2,3,4,5,6,7,8";
    let dense = vec!["0.5"; 13].join(",");
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"ids\",\"datatype\":\"INT64\",\"shape\":[1,8],\"data\":[{ids}]}},\
         {{\"name\":\"dense\",\"datatype\":\"FP32\",\"shape\":[1,13],\"data\":[{dense}]}}]}}"
    );
    let (status, answer) = http(server.http, "POST", "/v2/models/ranker_ir/infer", &body);
    assert_eq!(status, 200, "{answer}");
    let wide = body.replace("[1,2,3", "[12345678901,2,3");
    let (status, answer) = http(server.http, "POST", "/v2/models/ranker_ir/infer", &wide);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("32-bit"), "{answer}");
}
