//! The ONNX backends of the built `kiln serve`: with `--default-onnx-backend auto` (the default)
//! ONNX models go to onnxruntime when its library loads and to tract otherwise; a model that asks
//! for onnxruntime without the library fails alone, with a message saying how to get it, while
//! the other models serve.
//!
//! The onnxruntime half needs the library (`scripts/setup-python.sh` puts it in `.venv`); without
//! it that half is skipped with a message, except when `CI` is set.

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
    let _ = fs::remove_file(&ready); // a previous server's
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--model-repository")
        .arg(repo)
        .args([
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--no-metrics",
            "--ready-file",
        ])
        .arg(&ready)
        .args(args)
        .current_dir(scratch) // no ./.venv here: only the flags and the environment count
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

/// One HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
    assert_eq!(http(server.http, "GET", "/v2/models/mlp/ready").0, 200);
    let (_, config) = http(server.http, "GET", "/v2/models/mlp/config");
    assert!(config.contains("\"platform\":\"tract_onnx\""), "{config}");
    assert_ne!(
        http(server.http, "GET", "/v2/models/ranker_ort/ready").0,
        200
    );
    let (_, index) = http(server.http, "POST", "/v2/repository/index");
    assert!(
        index.contains("pip install onnxruntime==1.32.0") && index.contains("--ort-library"),
        "{index}"
    );
}

#[cfg(feature = "ort")]
/// The onnxruntime library of the repository's `.venv`, or `None` after saying why.
fn venv_library() -> Option<PathBuf> {
    let capi = repo_root().join(".venv/lib");
    let found = fs::read_dir(&capi).ok().and_then(|it| {
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
            "onnxruntime serve test: {why}"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED onnxruntime serve test: {why}");
    }
    found
}

#[cfg(feature = "ort")]
#[test]
fn with_the_library_onnx_models_default_to_onnxruntime() {
    let Some(lib) = venv_library() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = mixed_repo(tmp.path());
    let server = serve(&repo, tmp.path(), &["--ort-library", lib.to_str().unwrap()]);
    for model in ["mlp", "ranker_ort"] {
        assert_eq!(
            http(server.http, "GET", &format!("/v2/models/{model}/ready")).0,
            200,
            "{model}"
        );
        let (_, config) = http(server.http, "GET", &format!("/v2/models/{model}/config"));
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
    let (_, config) = http(server.http, "GET", "/v2/models/mlp/config");
    assert!(config.contains("\"platform\":\"tract_onnx\""), "{config}");
}
