//! The kiln-server fixtures `gather` (ids INT64 [N,3] straight into a Gather over a 10-row
//! table, table[i] = [i, -10 i]) and `gather_offset` (ids + 1 before the Gather, which no check
//! before compute sees) served by the built `kiln serve` on onnxruntime and on tract: an id
//! outside the table is a 400 with the engine's or the check's message, the next request is
//! answered right and the model stays ready.
//!
//! The onnxruntime half needs the library of the repository's `.venv`
//! (`scripts/setup-python.sh`); without it that half is skipped with a message, except when
//! `CI` is set.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    fs::canonicalize(&root).unwrap_or(root)
}

/// A running `kiln serve`, killed on drop; its log is printed if the test failed.
struct Server {
    child: Child,
    log: PathBuf,
    http: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- kiln serve log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Starts `kiln serve` on `repo` (every port 0) with `args` and waits for its ready file.
fn serve(repo: &Path, scratch: &Path, args: &[&str]) -> Server {
    let ready = scratch.join("ready.json");
    let log = scratch.join("serve.log");
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--model-repository")
        .arg(repo)
        .args(["--http-port", "0", "--grpc-port", "0", "--no-metrics"])
        .arg("--ready-file")
        .arg(&ready)
        .args(args)
        .current_dir(scratch)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_ORT_LIBRARY")
        .env_remove("KILN_DEFAULT_ONNX_BACKEND")
        .env("KILN_PYTHON", "/nonexistent/python")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start kiln serve");
    let mut server = Server {
        child,
        log,
        http: 0,
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(text) = fs::read_to_string(&ready) {
            let port = text
                .split("\"http_port\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok());
            if let Some(p) = port {
                server.http = p;
                return server;
            }
        }
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "kiln serve exited early"
        );
        // a test thread polling a child process, not a runtime thread
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("kiln serve did not get ready");
}

/// One HTTP/1.1 request with a JSON body; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

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
    let Some(lib) = venv_library() else { return };
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

#[cfg(feature = "ort")]
/// The onnxruntime library of the repository's `.venv`, or `None` after saying why.
fn venv_library() -> Option<PathBuf> {
    let lib = repo_root().join(".venv/lib");
    let found = fs::read_dir(&lib).ok().and_then(|it| {
        it.filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .find_map(|d| {
                fs::read_dir(d)
                    .ok()?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                    })
            })
    });
    if found.is_none() {
        let why = "no onnxruntime library in .venv; run scripts/setup-python.sh";
        assert!(
            std::env::var_os("CI").is_none(),
            "onnxruntime gather test: {why}"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED onnxruntime gather test: {why}");
    }
    found
}
