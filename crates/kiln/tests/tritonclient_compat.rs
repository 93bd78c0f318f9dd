//! Compatibility with NVIDIA's own Triton clients: starts the built `kiln serve` on a copy of the
//! example model repository plus the BYTES model `strings` of the conformance suite (every port
//! 0, explicit model control with every model loaded), then runs
//! `tests/compat/tritonclient_compat.py`, which drives it with tritonclient 2.51 over HTTP (JSON
//! and binary tensors) and gRPC (unary, async and streaming), compares every answer with
//! onnxruntime, and checks Triton's extensions (`tests/compat/triton_extras.py`). The whole run
//! happens twice: with `--default-onnx-backend onnxruntime` and with `tract`.
//!
//! Needs the project's Python environment (`scripts/setup-python.sh` creates `.venv`); the
//! interpreter can be overridden with `KILN_PYTHON`. Without it the test is skipped with a message,
//! except when `CI` is set, where it fails (`kiln_testkit::python`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the server may take to load the models and write its ready file.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for the whole Python run; its own calls time out after 60 s each.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// A scratch directory removed on drop (std only: no tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("kiln-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("create scratch directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The running server: killed and reaped on drop, also when the test panics, and its log
/// printed when the test failed.
struct Server {
    /// The `kiln serve` child process.
    child: Child,
    /// Where the server's stdout and stderr go.
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- kiln serve log ({}) ---", self.log.display());
            eprintln!("{}", tail(&self.log, 200));
        }
    }
}

/// The last `lines` lines of a file, or a note saying why there are none.
fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Reads `"key": <number>` out of the ready file's one-level JSON object.
fn json_port(text: &str, key: &str) -> Option<u16> {
    let quoted = format!("\"{key}\"");
    let rest = &text[text.find(&quoted)? + quoted.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok().filter(|&p| p != 0)
}

/// Copies the directory tree `from` to `to` (plain files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("read a directory entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// The repository the server runs on: the example models and the conformance suite's BYTES
/// model `strings`, copied so that loads and unloads touch no committed file.
fn build_repository(root: &Path, into: &Path) {
    copy_tree(&root.join("examples/models"), into);
    copy_tree(
        &root.join("tests/conformance/models/strings"),
        &into.join("strings"),
    );
}

fn start_server(root: &Path, models: &Path, scratch: &Path, backend: &str) -> (Server, u16, u16) {
    let ready = scratch.join("ready.json");
    let log = scratch.join("kiln-serve.log");
    let out = fs::File::create(&log).expect("create server log");
    let err = out.try_clone().expect("clone server log handle");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--model-repository")
        .arg(models)
        .args(["--http-port", "0"])
        .args(["--grpc-port", "0"])
        .args(["--metrics-port", "0"])
        .arg("--allow-client-shm")
        // the repository API's load and unload need explicit mode; every model loads at start
        .args(["--model-control-mode", "explicit", "--load-model=*"])
        .args(["--default-onnx-backend", backend])
        .arg("--ready-file")
        .arg(&ready)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start kiln serve");
    let mut server = Server { child, log };

    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(&ready) {
            // a half-written file is read again on the next turn
            if text.trim_end().ends_with('}') {
                if let (Some(http), Some(grpc)) =
                    (json_port(&text, "http_port"), json_port(&text, "grpc_port"))
                {
                    return (server, http, grpc);
                }
            }
        }
        if let Some(status) = server.child.try_wait().expect("poll kiln serve") {
            panic!(
                "kiln serve exited with {status} before writing {}",
                ready.display()
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            panic!(
                "kiln serve wrote no complete {} within {READY_TIMEOUT:?}",
                ready.display()
            );
        }
        // a test thread polling a child process, not a runtime thread
        #[allow(clippy::disallowed_methods)]
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn tritonclient_http_and_grpc() {
    let root = kiln_testkit::repo_root();
    let Some(python) = kiln_testkit::python(
        "tritonclient compatibility test",
        &["tritonclient.http", "tritonclient.grpc", "onnxruntime"],
    ) else {
        return;
    };
    let examples = root.join("examples/models");
    assert!(
        examples.join("mlp/1/model.onnx").exists() && examples.join("ranker/1/model.onnx").exists(),
        "{} lacks the example models; run .venv/bin/python examples/gen_models.py",
        examples.display()
    );
    // one backend after the other: the two servers would compete for the same cores
    let failures: Vec<String> = ["onnxruntime", "tract"]
        .into_iter()
        .filter_map(|backend| run_compat(&root, &python, backend).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Serves the repository with `backend` as the default ONNX backend and runs the script
/// against it; the error holds the failed checks.
fn run_compat(root: &Path, python: &Path, backend: &str) -> Result<(), String> {
    let scratch = TempDir::new(&format!("tritonclient-{backend}"));
    let models = scratch.0.join("models");
    build_repository(root, &models);
    let script = root.join("tests/compat/tritonclient_compat.py");
    let (server, http, grpc) = start_server(root, &models, &scratch.0, backend);

    let client_log = scratch.0.join("client.log");
    let out = fs::File::create(&client_log).expect("create client log");
    let err = out.try_clone().expect("clone client log handle");
    let mut client = Command::new(python)
        .arg(&script)
        .arg("--http")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--grpc")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--models")
        .arg(&models)
        .arg("--backend")
        .arg(backend)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));

    let start = Instant::now();
    let status = loop {
        if let Some(status) = client.try_wait().expect("poll the compatibility script") {
            break status;
        }
        if start.elapsed() > CLIENT_TIMEOUT {
            let _ = client.kill();
            let _ = client.wait();
            panic!(
                "the compatibility script ran past {CLIENT_TIMEOUT:?} on {backend}:\n{}",
                tail(&client_log, 100)
            );
        }
        // a test thread polling a child process, not a runtime thread
        #[allow(clippy::disallowed_methods)]
        sleep(Duration::from_millis(100));
    };
    let report = fs::read_to_string(&client_log).unwrap_or_default();
    println!("--- {backend} ---\n{report}");
    if status.success() {
        return Ok(());
    }
    eprintln!(
        "--- kiln serve log ({backend}) ---\n{}",
        tail(&server.log, 200)
    );
    Err(format!(
        "tritonclient compatibility checks failed on {backend} ({status}):\n{}",
        report
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.contains(" passed, ") || l.contains("Error"))
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

#[test]
fn reads_ports_from_the_ready_file() {
    let text = r#"{"http_port":8000, "grpc_port" : 8001,"metrics_port":8002}"#;
    assert_eq!(json_port(text, "http_port"), Some(8000));
    assert_eq!(json_port(text, "grpc_port"), Some(8001));
    assert_eq!(json_port(text, "metrics_port"), Some(8002));
    assert_eq!(json_port(r#"{"http_port":80"#, "grpc_port"), None);
    assert_eq!(json_port(r#"{"http_port":0}"#, "http_port"), None);
}
