//! Harness shared by the kiln-server integration tests: starts the whole server in-process on
//! port 0 over a model repository (the examples, or a copy in a temporary directory that a test
//! may change), and helpers to build requests, read answers and compare numbers.

#![allow(dead_code, unused_imports)]

mod data;

pub use data::*;

use kiln_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use kiln_runtime::{Backends, ControlMode, ModelRepository};
use kiln_server::{ServerConfig, ServerError, Settings, Starter};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Absolute tolerance of golden outputs against onnxruntime's (`expected.json`).
pub const GOLDEN_TOL: f32 = 1e-5;
/// Absolute tolerance of batched against one-by-one outputs.
pub const BATCH_TOL: f32 = 1e-6;
/// Upper bound for anything the tests wait for (loads, polls, reloads); never a duration
/// that is asserted.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Request body limit of the default test server.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// The example model repository (`examples/models`).
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

/// The fixture model repository of these tests (`tests/fixtures/models`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A fixture file (`tests/fixtures/<name>`).
pub fn fixture_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    for e in std::fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let e = e.expect("directory entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to)
                .unwrap_or_else(|err| panic!("copy to {}: {err}", to.display()));
        }
    }
}

/// A temporary repository holding copies of the named models, from the examples or, for
/// `pair`, from the fixtures.
pub fn copy_models(names: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for name in names {
        let src = if *name == "pair" {
            fixtures()
        } else {
            examples()
        }
        .join(name);
        copy_dir(&src, &dir.path().join(name));
    }
    dir
}

/// An mlp `config.toml` with the given scheduler settings.
pub fn mlp_config(delay_us: u64, max_queue: usize, preferred: &[u32], instances: u32) -> String {
    format!(
        "max_batch_size = 64\n\
         [[input]]\nname = \"x\"\ndata_type = \"FP32\"\ndims = [256]\n\
         [[output]]\nname = \"y\"\ndata_type = \"FP32\"\ndims = [1]\n\
         [dynamic_batching]\nmax_queue_delay_us = {delay_us}\npreferred_batch_sizes = {preferred:?}\n\
         max_queue_size = {max_queue}\n\
         [instance_group]\ncount = {instances}\nthreads = 1\n"
    )
}

/// Writes `<root>/<model>/config.toml`.
pub fn write_config(root: &Path, model: &str, text: &str) {
    std::fs::write(root.join(model).join("config.toml"), text).expect("write config.toml");
}

/// A repository copy with only mlp, configured with these scheduler settings.
pub fn mlp_repo(delay_us: u64, max_queue: usize, preferred: &[u32], instances: u32) -> TempDir {
    let dir = copy_models(&["mlp"]);
    write_config(
        dir.path(),
        "mlp",
        &mlp_config(delay_us, max_queue, preferred, instances),
    );
    dir
}

/// How to start a test server.
pub struct Options {
    /// Model control mode.
    pub mode: ControlMode,
    /// Models loaded at start in the explicit mode (`*`: every one).
    pub startup_models: Vec<String>,
    /// Largest request accepted.
    pub max_request_bytes: usize,
    /// Control-plane token.
    pub admin_token: Option<String>,
    /// Whether clients may register system shared-memory regions.
    pub allow_client_shm: bool,
    /// Timeouts, connection caps and the in-flight budget.
    pub limits: kiln_server::Limits,
    /// Byte limit of the response cache (`--response-cache-mb`, in bytes).
    pub response_cache_bytes: u64,
    /// Encoding of gRPC responses for clients that accept it (`None`: uncompressed).
    pub grpc_response_compression: Option<tonic::codec::CompressionEncoding>,
    /// Backends registered besides tract and recsys (onnxruntime, when a test has its library).
    pub extra_backends: Vec<Arc<dyn kiln_core::backend::Backend>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: ControlMode::None,
            startup_models: Vec::new(),
            max_request_bytes: DEFAULT_MAX_BYTES,
            admin_token: None,
            allow_client_shm: false,
            limits: kiln_server::Limits::default(),
            response_cache_bytes: 64 << 20,
            grpc_response_compression: None,
            extra_backends: Vec::new(),
        }
    }
}

impl Options {
    /// The explicit model-control mode with every model loaded at start: repository load and
    /// unload are refused in the other modes, as in Triton.
    pub fn explicit_all() -> Self {
        Options {
            mode: ControlMode::Explicit,
            startup_models: vec!["*".into()],
            ..Default::default()
        }
    }
}

/// The backends of the test servers: tract (also the default for `.onnx` models) and recsys,
/// whose metrics go into `registry`.
pub fn backends(registry: &mut prometheus_client::registry::Registry) -> Backends {
    let mut backends = Backends::new();
    backends.register(Arc::new(kiln_backend_tract::TractBackend));
    let recsys = Arc::new(kiln_recsys::RecsysBackend::new());
    recsys.collector().register(registry);
    backends.register(recsys);
    backends
}

/// A running in-process server; shut down (without waiting) on drop.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub http: String,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// `http://127.0.0.1:<port>` of the metrics endpoint.
    pub metrics: String,
    /// The repository the server serves.
    pub repo: Arc<ModelRepository>,
    /// The repository directory.
    pub root: PathBuf,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Turns the server's start-up readiness on and off.
    pub starter: Starter,
    /// Keeps a temporary repository alive as long as the server.
    _dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// A server over the example repository.
    pub async fn examples() -> Self {
        Self::start_at(examples(), None, Options::default()).await
    }

    /// A server over a temporary repository, which it keeps alive.
    pub async fn temp(dir: TempDir, opts: Options) -> Self {
        let root = dir.path().to_path_buf();
        Self::start_at(root, Some(dir), opts).await
    }

    /// Binds every port (0 = any free one), loads the repository and serves it.
    pub async fn start_at(root: PathBuf, dir: Option<TempDir>, opts: Options) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut backends = backends(&mut registry);
        for b in &opts.extra_backends {
            backends.register(b.clone());
        }
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut settings = Settings::new(
            &root,
            ServerConfig {
                http_addr: any,
                grpc_addr: any,
                metrics_addr: Some(any),
                max_request_bytes: opts.max_request_bytes,
                admin_token: opts.admin_token.clone(),
                allow_client_shm: opts.allow_client_shm,
                limits: opts.limits.clone(),
                grpc_response_compression: opts.grpc_response_compression,
            },
        );
        settings.control_mode = opts.mode;
        settings.startup_models = opts.startup_models.clone();
        settings.response_cache_bytes = opts.response_cache_bytes;
        let (stop, stopped) = oneshot::channel::<()>();
        let running = kiln_server::assemble(settings, backends, registry)
            .await
            .expect("bind")
            .start(async move {
                let _ = stopped.await;
            })
            .await
            .expect("start repository");
        let metrics = running.metrics_addr.expect("metrics enabled");
        TestServer {
            http: format!("http://{}", running.http_addr),
            http_addr: running.http_addr,
            grpc_addr: running.grpc_addr,
            metrics: format!("http://{metrics}"),
            repo: running.repo,
            root,
            client: kiln_testkit::http_client(),
            starter: running.starter,
            _dir: dir,
            stop: Some(stop),
            task: Some(running.task),
        }
    }

    /// Full URL of an HTTP path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// A gRPC client on a fresh connection.
    pub async fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel().await)
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("grpc connect")
    }

    /// GET; the status and the body as JSON (`Null` when empty).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        read_json(r).await
    }

    /// POST of a JSON body; the status and the body as JSON (`Null` when empty).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        read_json(r).await
    }

    /// POST of raw bytes with optional `Inference-Header-Content-Length`; status, headers, body.
    pub async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        header_len: Option<usize>,
    ) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
        let mut r = self.client.post(self.url(path)).body(body);
        if let Some(n) = header_len {
            r = r.header("Inference-Header-Content-Length", n.to_string());
        }
        let resp = r.send().await.expect("POST");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.expect("body"))
    }

    /// Infers a JSON request on `model`; panics unless it succeeds.
    pub async fn infer_ok(&self, model: &str, body: &Value) -> Value {
        let (status, v) = self.post(&format!("/v2/models/{model}/infer"), body).await;
        assert_eq!(status, 200, "infer on {model} failed: {v}");
        v
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.begin_shutdown();
        let task = self.task.take().expect("server task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("serve() returns after shutdown")
            .expect("server task")
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Takes the server task, to await `serve()` after [`TestServer::begin_shutdown`].
    pub fn take_task(&mut self) -> JoinHandle<Result<(), ServerError>> {
        self.task.take().expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// A response's status and JSON body (`Null` when the body is empty).
pub async fn read_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    if text.is_empty() {
        return (status, Value::Null);
    }
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, v)
}

/// The `error` message of an error body, checked to be a non-empty string.
pub fn error_of(v: &Value) -> String {
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no 'error' in {v}"));
    assert!(!msg.is_empty(), "empty error message");
    msg.to_string()
}

/// Polls `check` every 50 ms until it is true; panics naming `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one raw HTTP/1.1 request (so the path reaches the server exactly as written);
/// returns the status and the body.
pub async fn raw_http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The statistics entry of `model` version `version` from `/v2/models/<model>/stats`.
pub async fn http_stats(s: &TestServer, model: &str) -> Value {
    let (status, v) = s.get(&format!("/v2/models/{model}/stats")).await;
    assert_eq!(status, 200, "stats of {model}: {v}");
    v["model_stats"][0].clone()
}

/// The repository index row of `model` (and `version`, if given).
pub fn index_row<'a>(index: &'a Value, model: &str, version: Option<&str>) -> Option<&'a Value> {
    index
        .as_array()?
        .iter()
        .find(|e| e["name"] == model && version.is_none_or(|v| e["version"] == v))
}

/// `POST /v2/repository/index`.
pub async fn http_index(s: &TestServer) -> Value {
    let (status, v) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(status, 200, "repository index: {v}");
    v
}

/// The text of the server's `/metrics` (asserting a 200).
pub async fn metrics_text(s: &TestServer) -> String {
    let r = s
        .client
        .get(format!("{}/metrics", s.metrics))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    r.text().await.expect("metrics text")
}

/// Reads one complete answer on a raw connection (the head and `Content-Length` bytes of
/// body) or until the server closes it; panics after [`PATIENCE`].
pub async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("an answer within patience")
            .unwrap_or(0);
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_string();
        if n == 0 {
            return text;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}
