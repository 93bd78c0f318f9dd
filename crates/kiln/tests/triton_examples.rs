//! Triton's own Python client examples as a conformance suite: `tests/triton_examples/` holds
//! them unchanged (triton-inference-server/client r24.10, BSD license), and `gen_models.py`
//! there writes ONNX stand-ins for the QA models they call and a test image. The built
//! `kiln serve` serves that repository (every port 0, explicit model control, client shared
//! memory allowed, `--server-name triton`, since the health examples check the name) once on
//! tract and once on ONNX Runtime, and every example runs against it with `--url`; the image
//! clients run with the arguments of Triton's QA. Each run's outcome is printed; the test fails
//! if any run fails on either backend.
//!
//! The model-control examples count the models in the repository index (8 over gRPC, 7 over
//! HTTP) and load, reconfigure and unload `simple`, so each gets a server of its own over a
//! repository holding the models it expects.
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
    "identity_fp32",
    "inception_graphdef",
    "densenet_onnx",
];
/// The model-control examples, each with the models of its own repository (the examples check
/// that the index lists exactly 8 and 7 models).
const MODEL_CONTROL: &[(&str, &[&str])] = &[
    ("simple_grpc_model_control.py", MODELS),
    (
        "simple_http_model_control.py",
        &[
            "simple",
            "simple_int8",
            "simple_string",
            "simple_identity",
            "custom_identity_int32",
            "inception_graphdef",
            "densenet_onnx",
        ],
    ),
];
/// The image clients, with the arguments Triton's QA runs them with (the image path follows);
/// `true` where the run talks gRPC.
const IMAGE_RUNS: &[(&str, &[&str], bool)] = &[
    (
        "image_client.py",
        &["-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION"],
        false,
    ),
    (
        "image_client.py",
        &[
            "-m",
            "inception_graphdef",
            "-c",
            "3",
            "-s",
            "INCEPTION",
            "-b",
            "2",
            "-a",
        ],
        false,
    ),
    (
        "image_client.py",
        &[
            "-i",
            "grpc",
            "-m",
            "inception_graphdef",
            "-c",
            "3",
            "-s",
            "INCEPTION",
            "--streaming",
        ],
        true,
    ),
    (
        "grpc_image_client.py",
        &[
            "-m",
            "inception_graphdef",
            "-c",
            "3",
            "-s",
            "INCEPTION",
            "-b",
            "2",
        ],
        true,
    ),
    (
        "grpc_image_client.py",
        &["-m", "densenet_onnx", "-c", "3", "-s", "INCEPTION"],
        true,
    ),
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

/// Starts `kiln serve` over `models` on `backend`, loading `load`; `tag` names its files.
fn start_server(models: &Path, load: &[&str], backend: &str, tag: &str) -> (Server, u16, u16) {
    let scratch = models
        .parent()
        .expect("repository inside the scratch directory");
    let ready = scratch.join(format!("ready-{tag}.json"));
    let log = scratch.join(format!("kiln-serve-{tag}.log"));
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
        .arg(load.join(","))
        .arg("--allow-client-shm")
        // simple_{http,grpc}_health_metadata.py check that the server calls itself "triton"
        .args(["--server-name", "triton"])
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
                "kiln serve ({tag}) exited with {status}:\n{}",
                tail(&server.log, 50)
            );
        }
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "kiln serve ({tag}) was not ready within {READY_TIMEOUT:?}:\n{}",
            tail(&server.log, 50)
        );
        // a test thread polling a child process, not a runtime thread
        #[allow(clippy::disallowed_methods)]
        sleep(Duration::from_millis(100));
    }
}

/// Writes a repository of `models` to `out` with `gen_models.py`, and the test image to `image`.
fn generate(python: &Path, dir: &Path, out: &Path, models: &[&str], image: Option<&Path>) {
    let mut cmd = Command::new(python);
    cmd.arg(dir.join("gen_models.py"))
        .arg("--out")
        .arg(out)
        .arg("--models")
        .arg(models.join(","));
    if let Some(image) = image {
        cmd.arg("--image").arg(image);
    }
    let mut gen = cmd
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("run gen_models.py");
    let status = wait(&mut gen, EXAMPLE_TIMEOUT).expect("gen_models.py finished in time");
    assert!(status.success(), "gen_models.py failed: {status}");
}

/// One run of an example: the script, its arguments after `-u <url>`, whether it talks gRPC.
struct Run {
    script: String,
    args: Vec<String>,
    grpc: bool,
}

/// The vendored examples that run against the shared server: every one but the model-control
/// examples, each once without arguments, and the image clients with [`IMAGE_RUNS`].
fn runs(dir: &Path, image: &Path) -> Vec<Run> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read tests/triton_examples")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".py") && n != "gen_models.py")
        .filter(|n| !MODEL_CONTROL.iter().any(|(m, _)| m == n))
        .filter(|n| !IMAGE_RUNS.iter().any(|(m, _, _)| m == n))
        .collect();
    names.sort();
    let mut runs: Vec<Run> = names
        .into_iter()
        .map(|script| Run {
            grpc: script.contains("grpc"),
            script,
            args: Vec::new(),
        })
        .collect();
    for (script, args, grpc) in IMAGE_RUNS {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(image.display().to_string());
        runs.push(Run {
            script: script.to_string(),
            args,
            grpc: *grpc,
        });
    }
    runs
}

/// Runs `runs` against one server; returns the failures, each with its output's tail.
fn run_all(
    python: &Path,
    dir: &Path,
    runs: &[Run],
    ports: (u16, u16),
    backend: &str,
    scratch: &Path,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let port = if run.grpc { ports.1 } else { ports.0 };
        let url = format!("127.0.0.1:{port}");
        let shown = format!("{} {}", run.script, run.args.join(" "))
            .trim_end()
            .to_string();
        let log = scratch.join(format!("{backend}-{i}-{}.log", run.script));
        let out = fs::File::create(&log).expect("create example log");
        let err = out.try_clone().expect("clone example log handle");
        let mut child = Command::new(python)
            .arg(dir.join(&run.script))
            .args(["-u", &url])
            .args(&run.args)
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
            None => println!("PASS {backend:11} {shown}"),
            Some(why) => {
                println!("FAIL {backend:11} {shown} ({why})");
                failed.push(format!(
                    "--- {backend} {shown} ({why}) ---\n{}",
                    tail(&log, 15)
                ));
            }
        }
    }
    failed
}

/// The failures of `runs` against a fresh server over `models` (`tag` names its files), with
/// the server's log when any failed.
fn serve_and_run(
    python: &Path,
    dir: &Path,
    runs: &[Run],
    (models, load): (&Path, &[&str]),
    backend: &str,
    tag: &str,
) -> Vec<String> {
    let (server, http, grpc) = start_server(models, load, backend, tag);
    let scratch = models
        .parent()
        .expect("repository inside the scratch directory");
    let mut failed = run_all(python, dir, runs, (http, grpc), backend, scratch);
    if !failed.is_empty() {
        failed.push(format!(
            "--- kiln serve ({tag}) log ---\n{}",
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
            // attrdict too, which imports only after image_client.py patches `collections`
            "PIL",
        ],
    ) else {
        return;
    };
    let dir = root.join("tests/triton_examples");
    let scratch = TempDir::new("triton-examples");
    let image = scratch.0.join("image.png");
    let models = scratch.0.join("models");
    generate(&python, &dir, &models, MODELS, Some(&image));
    let shared = runs(&dir, &image);
    let mut control = Vec::new();
    for (i, (script, expected)) in MODEL_CONTROL.iter().enumerate() {
        let repo = scratch.0.join(format!("control-{i}"));
        fs::create_dir_all(&repo).expect("create model-control scratch directory");
        let models = repo.join("models");
        generate(&python, &dir, &models, expected, None);
        let run = Run {
            script: script.to_string(),
            args: Vec::new(),
            grpc: script.contains("grpc"),
        };
        control.push((models, *expected, run));
    }

    let mut failed = Vec::new();
    for backend in ["tract", "onnxruntime"] {
        failed.extend(serve_and_run(
            &python,
            &dir,
            &shared,
            (&models, MODELS),
            backend,
            backend,
        ));
        for (models, load, run) in &control {
            let tag = format!("{backend}-{}", run.script.trim_end_matches(".py"));
            failed.extend(serve_and_run(
                &python,
                &dir,
                std::slice::from_ref(run),
                (models, load),
                backend,
                &tag,
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "Triton client examples failed:\n{}",
        failed.join("\n")
    );
}

#[test]
fn every_named_example_is_vendored() {
    let dir = kiln_testkit::repo_root().join("tests/triton_examples");
    let named = MODEL_CONTROL
        .iter()
        .map(|(s, _)| *s)
        .chain(IMAGE_RUNS.iter().map(|(s, _, _)| *s));
    for script in named {
        assert!(dir.join(script).is_file(), "{script} is not vendored");
    }
    let all = runs(&dir, Path::new("image.png"));
    assert!(all.len() >= 25, "vendored examples: {}", all.len());
}
