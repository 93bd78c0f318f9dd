//! Triton's own Python client examples as a conformance suite: `tests/triton_examples/` holds
//! them unchanged (triton-inference-server/client r24.10, BSD license), and `gen_models.py`
//! there writes ONNX stand-ins for the QA models they call. The built `kiln serve` serves that
//! repository (every port 0, explicit model control, client shared memory allowed) once on
//! tract and once on ONNX Runtime, and every example runs against it with `--url`. Each run's
//! outcome is printed; the test fails if any example fails on either backend.
//!
//! The model-control examples load, reconfigure and unload `simple`, so they run last.
//!
//! Needs the project's Python environment (`scripts/setup-python.sh` creates `.venv`); without
//! it the test is skipped with a message, except under CI (`kiln_testkit::python`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the server may take to load the models and write its ready file.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one example.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The models `gen_models.py` writes, loaded at start.
const MODELS: &[&str] = &[
    "simple",
    "simple_int8",
    "simple_string",
    "simple_identity",
    "custom_identity_int32",
    "inception_graphdef",
    "densenet_onnx",
];

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

/// The running server: killed and reaped on drop.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Waits for `child` with a deadline; `None` when it ran past it (then it is killed).
fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll child process") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // a test thread polling a child process, not a runtime thread
        #[allow(clippy::disallowed_methods)]
        sleep(Duration::from_millis(50));
    }
}

fn start_server(models: &Path, backend: &str, scratch: &Path) -> (Server, u16, u16) {
    let ready = scratch.join(format!("ready-{backend}.json"));
    let log = scratch.join(format!("kiln-serve-{backend}.log"));
    let out = fs::File::create(&log).expect("create server log");
    let err = out.try_clone().expect("clone server log handle");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--model-repository")
        .arg(models)
        .args([
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .args(["--default-onnx-backend", backend])
        .args(["--model-control-mode", "explicit"])
        .arg("--load-model")
        .arg(MODELS.join(","))
        .arg("--allow-client-shm")
        .arg("--ready-file")
        .arg(&ready)
        // the ONNX Runtime library is found through the project's .venv
        .current_dir(kiln_testkit::repo_root())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start kiln serve");
    let mut server = Server { child, log };
    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(&ready) {
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
                "kiln serve ({backend}) exited with {status}:\n{}",
                tail(&server.log, 50)
            );
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "kiln serve ({backend}) was not ready within {READY_TIMEOUT:?}:\n{}",
            tail(&server.log, 50)
        );
        // a test thread polling a child process, not a runtime thread
        #[allow(clippy::disallowed_methods)]
        sleep(Duration::from_millis(100));
    }
}

/// The vendored examples, the model-control ones last.
fn examples(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read tests/triton_examples")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".py") && n != "gen_models.py")
        .collect();
    names.sort_by_key(|n| (n.contains("model_control"), n.clone()));
    names
}

/// Runs every example against one server; returns the failures, each with its output's tail.
fn run_examples(python: &Path, dir: &Path, backend: &str, scratch: &Path) -> Vec<String> {
    let models = scratch.join("models");
    let (server, http, grpc) = start_server(&models, backend, scratch);
    let mut failed = Vec::new();
    for name in examples(dir) {
        let url = if name.contains("grpc") {
            format!("127.0.0.1:{grpc}")
        } else {
            format!("127.0.0.1:{http}")
        };
        let log = scratch.join(format!("{backend}-{name}.log"));
        let out = fs::File::create(&log).expect("create example log");
        let err = out.try_clone().expect("clone example log handle");
        let mut child = Command::new(python)
            .arg(dir.join(&name))
            .args(["-u", &url])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(scratch)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
        let outcome = match wait(&mut child, EXAMPLE_TIMEOUT) {
            Some(s) if s.success() => None,
            Some(s) => Some(format!("{s}")),
            None => Some(format!("ran past {EXAMPLE_TIMEOUT:?}")),
        };
        match outcome {
            None => println!("PASS {backend:11} {name}"),
            Some(why) => {
                println!("FAIL {backend:11} {name} ({why})");
                failed.push(format!(
                    "--- {backend} {name} ({why}) ---\n{}",
                    tail(&log, 15)
                ));
            }
        }
    }
    if !failed.is_empty() {
        failed.push(format!(
            "--- kiln serve ({backend}) log ---\n{}",
            tail(&server.log, 40)
        ));
    }
    failed
}

#[test]
fn triton_client_examples_pass_on_both_backends() {
    let root = kiln_testkit::repo_root();
    let Some(python) = kiln_testkit::python(
        "Triton client examples",
        &[
            "tritonclient.http",
            "tritonclient.grpc",
            "tritonclient.http.aio",
            "tritonclient.grpc.aio",
            "onnx",
        ],
    ) else {
        return;
    };
    let dir = root.join("tests/triton_examples");
    let scratch = TempDir::new("triton-examples");
    let mut gen = Command::new(&python)
        .arg(dir.join("gen_models.py"))
        .arg("--out")
        .arg(scratch.0.join("models"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("run gen_models.py");
    let status = wait(&mut gen, EXAMPLE_TIMEOUT).expect("gen_models.py finished in time");
    assert!(status.success(), "gen_models.py failed: {status}");

    let mut failed = Vec::new();
    for backend in ["tract", "onnxruntime"] {
        failed.extend(run_examples(&python, &dir, backend, &scratch.0));
    }
    assert!(
        failed.is_empty(),
        "Triton client examples failed:\n{}",
        failed.join("\n")
    );
}

#[test]
fn model_control_examples_run_last() {
    let root = kiln_testkit::repo_root();
    let names = examples(&root.join("tests/triton_examples"));
    assert!(names.len() >= 20, "vendored examples: {names:?}");
    let first_control = names
        .iter()
        .position(|n| n.contains("model_control"))
        .expect("model control examples vendored");
    assert!(names[first_control..]
        .iter()
        .all(|n| n.contains("model_control")));
}
