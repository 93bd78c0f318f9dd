//! Harness shared by the tests that drive the built `kiln serve`: start it on port 0 over a
//! repository, wait for its ready file, send HTTP/1.1 requests, find the onnxruntime library.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use kiln_testkit::repo_root;

/// A running `kiln serve`, killed on drop; its log is printed if the test failed.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// Its HTTP port.
    pub http: u16,
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
pub fn serve(repo: &Path, scratch: &Path, args: &[&str]) -> Server {
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

/// One HTTP/1.1 request with a JSON body (empty for none); returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
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
    let body_out = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body_out)
}

/// The rows of `keys` of `model`'s `table` on a rows endpoint (a server's or a learner's, which
/// answer the same JSON); `None`: no row.
pub fn table_rows(port: u16, model: &str, table: &str, keys: &[u64]) -> Vec<Option<Vec<f32>>> {
    let list: Vec<String> = keys.iter().map(u64::to_string).collect();
    let path = format!(
        "/admin/v1/models/{model}/tables/{table}/rows?keys={}",
        list.join(",")
    );
    let (status, body) = http(port, "GET", &path, "");
    assert_eq!(status, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r["values"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap() as f32).collect())
        })
        .collect()
}

/// The onnxruntime library the tests use ([`kiln_testkit::ort_library`]), or `None` after
/// saying why (`test` names the caller); under `CI` its absence fails the test instead.
#[cfg(feature = "ort")]
pub fn venv_library(test: &str) -> Option<PathBuf> {
    kiln_testkit::ort_library(test)
}
