//! The kiln-server fixtures `gather` (ids INT64 [N,3] straight into a Gather over a 10-row
//! table, table[i] = [i, -10 i]) and `gather_offset` (ids + 1 before the Gather, which no check
//! before compute sees) served by the built `kiln serve` on onnxruntime and on tract: an id
//! outside the table is a 400 with the engine's or the check's message, the next request is
//! answered right and the model stays ready.
//!
//! The onnxruntime half needs the library of the repository's `.venv`
//! (`scripts/setup-python.sh`); without it that half is skipped with a message, except when
//! `CI` is set.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

fn infer(port: u16, model: &str, ids: [i64; 3]) -> (u16, String) {
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"ids\",\"datatype\":\"INT64\",\"shape\":[1,3],\"data\":[{},{},{}]}}]}}",
        ids[0], ids[1], ids[2]
    );
    http(port, "POST", &format!("/v2/models/{model}/infer"), &body)
}

/// A repository with the fixtures `gather` and `gather_offset`, each under `<name><suffix>`
/// with `head` in front of its config.
fn repo(dir: &Path, suffix: &str, head: &str) -> PathBuf {
    let repo = dir.join("models");
    let fixtures = repo_root().join("crates/kiln-server/tests/fixtures/models");
    for name in ["gather", "gather_offset"] {
        let to = repo.join(format!("{name}{suffix}"));
        fs::create_dir_all(to.join("1")).unwrap();
        fs::copy(
            fixtures.join(name).join("1/model.onnx"),
            to.join("1/model.onnx"),
        )
        .unwrap();
        let config = fs::read_to_string(fixtures.join(name).join("config.toml")).unwrap();
        fs::write(to.join("config.toml"), format!("{head}{config}")).unwrap();
    }
    repo
}

/// A valid request is answered right and the model reports ready.
fn still_serving(port: u16, model: &str, offset: i64) {
    let (status, body) = infer(port, model, [0, 3, -2]);
    assert_eq!(status, 200, "{model}: {body}");
    let want: Vec<String> = [0i64, 3, -2]
        .iter()
        .flat_map(|&i| {
            let r = (i + offset).rem_euclid(10);
            [format!("{r}.0"), format!("{}.0", -10 * r)]
        })
        .collect();
    let want = format!("\"data\":[{}]", want.join(","));
    assert!(body.contains(&want), "{model}: {want} in {body}");
    let ready = http(port, "GET", &format!("/v2/models/{model}/ready"), "").0;
    assert_eq!(ready, 200, "{model} still ready");
}

/// Checks one backend: the checked model and the engine's own error on the unchecked one.
fn check(port: u16, suffix: &str, offset_status: u16, offset_parts: &[&str]) {
    let gather = format!("gather{suffix}");
    let offset = format!("gather_offset{suffix}");
    for _ in 0..2 {
        let (status, body) = infer(port, &gather, [1, 12, 0]);
        assert_eq!(status, 400, "{body}");
        for part in ["input 'ids'", "value 12", "-10..=9", &gather] {
            assert!(body.contains(part), "{part:?} in {body}");
        }
        still_serving(port, &gather, 0);

        let (status, body) = infer(port, &offset, [9, 0, 0]);
        assert_eq!(status, offset_status, "{body}");
        for part in offset_parts.iter().chain([&offset.as_str()]) {
            assert!(body.contains(part), "{part:?} in {body}");
        }
        still_serving(port, &offset, 1);
    }
}

#[test]
fn tract_answers_ids_outside_the_table_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path(), "", "backend = \"tract\"\n");
    let server = serve(
        &repo,
        tmp.path(),
        &["--ort-library", "/nonexistent/libonnxruntime.so.1.32.0"],
    );
    check(server.http, "", 500, &["backend panicked"]);
}

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_answers_ids_outside_the_table_with_400_and_keeps_serving() {
    let Some(lib) = venv_library("onnxruntime gather test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(tmp.path(), "_ort", "backend = \"onnxruntime\"\n");
    let server = serve(&repo, tmp.path(), &["--ort-library", lib.to_str().unwrap()]);
    // onnxruntime's own error for the unchecked model is the request's fault: 400, its message.
    check(
        server.http,
        "_ort",
        400,
        &["indices element out of data bounds", "idx=10"],
    );
}
