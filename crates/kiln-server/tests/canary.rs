//! Canary releases: a model's traffic weights between its versions. Two copies of the example
//! `coarse_rank` as versions 1 and 2 with `[traffic] "1" = 90, "2" = 10`: requests naming no
//! version follow the split (binomial, within 5 sigma over 10k requests), the same
//! `routing_key` always reaches the same version, explicit versions are always honoured, the
//! control plane (HTTP and gRPC, admin token) changes the split for the next request and shows
//! it, and a canary that fails every request is rolled back on its own.

mod common;

use common::*;
use kiln_core::backend::{LoadedModel, ModelIo};
use kiln_core::{Backend, Error, ModelConfig, Result, Tensor};
use kiln_protocol::admin::traffic_admin_client::TrafficAdminClient;
use kiln_protocol::admin::{GetTrafficRequest, SetTrafficRequest};
use kiln_runtime::Backends;
use kiln_server::{ServerConfig, Settings};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const TOKEN: &str = "canary-token";
const MODEL: &str = "cr";

/// A repository holding `coarse_rank` as model `cr`, versions 1 and 2, with `traffic`.
fn two_versions(traffic: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = examples().join("coarse_rank");
    let dst = dir.path().join(MODEL);
    for v in ["1", "2"] {
        copy_dir(&src.join("1"), &dst.join(v));
    }
    let config = std::fs::read_to_string(src.join("config.toml")).expect("coarse_rank config");
    let config = format!("{config}\n[version_policy]\nall = true\n\n{traffic}");
    write_config(dir.path(), MODEL, &config);
    dir
}

async fn canary_server() -> TestServer {
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    TestServer::temp(two_versions("[traffic]\n\"1\" = 90\n\"2\" = 10\n"), opts).await
}

fn request(routing_key: Option<&str>) -> Value {
    let mut r = json!({
        "inputs": [{ "name": "features", "datatype": "FP32", "shape": [1, 32], "data": vec![0.25f32; 32] }]
    });
    if let Some(k) = routing_key {
        r["parameters"] = json!({ "routing_key": k });
    }
    r
}

/// The version that answered a request on `path` (panics unless it succeeded).
async fn served_by(s: &TestServer, path: &str, body: &Value) -> u64 {
    let (status, v) = s.post(path, body).await;
    assert_eq!(status, 200, "{path}: {v}");
    v["model_version"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no model_version in {v}"))
}

/// Answers per version of `n` requests naming no version, `workers` at a time.
async fn split(s: &Arc<TestServer>, n: usize, workers: usize) -> HashMap<u64, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let s = s.clone();
        let share = n / workers + usize::from(w < n % workers);
        tasks.spawn(async move {
            let mut seen = HashMap::new();
            let path = format!("/v2/models/{MODEL}/infer");
            for _ in 0..share {
                *seen
                    .entry(served_by(&s, &path, &request(None)).await)
                    .or_insert(0) += 1;
            }
            seen
        });
    }
    let mut all = HashMap::new();
    while let Some(seen) = tasks.join_next().await {
        for (v, c) in seen.expect("request task") {
            *all.entry(v).or_insert(0) += c;
        }
    }
    all
}

/// The `traffic` parameter of the model's configuration.
async fn traffic_parameter(s: &TestServer) -> String {
    let (status, c) = s.get(&format!("/v2/models/{MODEL}/config")).await;
    assert_eq!(status, 200, "{c}");
    c["parameters"]["traffic"]["string_value"]
        .as_str()
        .unwrap_or_else(|| panic!("no traffic parameter in {c}"))
        .to_string()
}

async fn put_traffic(s: &TestServer, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut r = s
        .client
        .put(s.url(&format!("/admin/v1/models/{MODEL}/traffic")))
        .json(body);
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    read_json(r.send().await.expect("PUT")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_weights_within_binomial_tolerance() {
    let s = Arc::new(canary_server().await);
    let n = 10_000usize;
    let seen = split(&s, n, 8).await;
    let to2 = seen.get(&2).copied().unwrap_or(0);
    assert_eq!(seen.values().sum::<usize>(), n, "{seen:?}");
    // binomial(n, 0.1): mean 1000, sigma 30
    let (p, nf) = (0.1, n as f64);
    let sigma = (nf * p * (1.0 - p)).sqrt();
    assert!(
        (to2 as f64 - nf * p).abs() <= 5.0 * sigma,
        "version 2 took {to2} of {n} (expected {} +- {})",
        nf * p,
        5.0 * sigma
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_always_reaches_the_same_version() {
    let s = canary_server().await;
    let path = format!("/v2/models/{MODEL}/infer");
    let mut versions = HashMap::new();
    for i in 0..200 {
        let key = format!("user-{i}");
        let first = served_by(&s, &path, &request(Some(&key))).await;
        for _ in 0..3 {
            assert_eq!(
                served_by(&s, &path, &request(Some(&key))).await,
                first,
                "{key}"
            );
        }
        *versions.entry(first).or_insert(0) += 1;
    }
    // 200 keys at 90/10: both versions are reached (no key reaching 2 has odds 0.9^200)
    assert_eq!(versions.len(), 2, "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_at_run_time_and_explicit_versions_are_honoured() {
    let s = canary_server().await;
    let traffic = format!("/admin/v1/models/{MODEL}/traffic");
    let (status, v) = s.get(&traffic).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"model": MODEL, "weights": {"1": 90, "2": 10}, "origin": "config"})
    );
    assert_eq!(traffic_parameter(&s).await, "1=90,2=10");

    // the token is required, and checked
    let all_to_2 = json!({"weights": {"1": 0, "2": 100}});
    for token in [None, Some("wrong")] {
        let (status, v) = put_traffic(&s, token, &all_to_2).await;
        assert_eq!(status, 401, "{token:?}: {v}");
    }
    let (_, v) = s.get(&traffic).await;
    assert_eq!(v["origin"], "config", "a refused PUT changes nothing: {v}");

    // refusals name what is wrong
    for (body, status, part) in [
        (json!({"weights": {"3": 5}}), 400, "version 3"),
        (json!({"weights": {"1": 0, "2": 0}}), 400, "above 0"),
        (json!({"weights": {"x": 1}}), 400, "weights.x"),
        (json!({"weights": {"1": -1}}), 400, "weights"),
        (json!({"split": {"1": 1}}), 400, "weights"),
    ] {
        let (got, v) = put_traffic(&s, Some(TOKEN), &body).await;
        assert_eq!(got, status, "{body}: {v}");
        let msg = error_of(&v);
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    let r = s
        .client
        .put(s.url("/admin/v1/models/nope/traffic"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&all_to_2)
        .send()
        .await
        .expect("PUT");
    let (status, v) = read_json(r).await;
    assert_eq!(status, 404, "{v}");

    // the next request follows a change
    let (status, v) = put_traffic(&s, Some(TOKEN), &all_to_2).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"model": MODEL, "weights": {"1": 0, "2": 100}, "origin": "api"})
    );
    let (_, v) = s.get(&traffic).await;
    assert_eq!(v["weights"], json!({"1": 0, "2": 100}), "{v}");
    assert_eq!(traffic_parameter(&s).await, "1=0,2=100");
    let path = format!("/v2/models/{MODEL}/infer");
    for i in 0..50 {
        assert_eq!(served_by(&s, &path, &request(None)).await, 2);
        let key = format!("k{i}");
        assert_eq!(served_by(&s, &path, &request(Some(&key))).await, 2);
    }
    // explicit versions are honoured whatever the weights
    for v in [1u64, 2] {
        let path = format!("/v2/models/{MODEL}/versions/{v}/infer");
        for _ in 0..20 {
            assert_eq!(served_by(&s, &path, &request(Some("k1"))).await, v);
        }
    }
    let (_, v) = put_traffic(&s, Some(TOKEN), &json!({"weights": {"1": 100}})).await;
    assert_eq!(v["weights"], json!({"1": 100}), "{v}");
    for _ in 0..50 {
        assert_eq!(served_by(&s, &path, &request(None)).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sets_and_reads_the_weights() {
    let s = canary_server().await;
    let mut admin = TrafficAdminClient::new(s.channel().await);
    let get = || GetTrafficRequest {
        model_name: MODEL.into(),
    };
    let w = admin
        .get_traffic(get())
        .await
        .expect("GetTraffic")
        .into_inner();
    assert_eq!(w.origin, "config");
    assert_eq!(w.weights, HashMap::from([(1, 90), (2, 10)]));

    let set = |weights: &[(u64, u32)]| SetTrafficRequest {
        model_name: MODEL.into(),
        weights: weights.iter().copied().collect(),
    };
    let e = admin
        .set_traffic(set(&[(2, 100)]))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    let mut with_token = tonic::Request::new(set(&[(9, 1)]));
    with_token
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let e = admin.set_traffic(with_token).await.expect_err("version 9");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("version 9"), "{e}");

    let mut with_token = tonic::Request::new(set(&[(1, 30), (2, 70)]));
    with_token
        .metadata_mut()
        .insert("authorization", TOKEN.parse().unwrap());
    let w = admin
        .set_traffic(with_token)
        .await
        .expect("SetTraffic")
        .into_inner();
    assert_eq!((w.origin.as_str(), w.weights.len()), ("api", 2));
    let (_, v) = s.get(&format!("/admin/v1/models/{MODEL}/traffic")).await;
    assert_eq!(v["weights"], json!({"1": 30, "2": 70}), "{v}");
}

// ---- automatic rollback, with a version that fails every request ----

/// Backend `flaky`: echoes input `x` as output `y`, or, for a version directory holding a
/// file `FAIL`, fails every batch.
struct Flaky;

struct FlakyModel {
    io: ModelIo,
    fail: bool,
}

impl Backend for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn load(&self, dir: &Path, config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        Ok(Arc::new(FlakyModel {
            io: ModelIo {
                inputs: config.input.clone(),
                outputs: config.output.clone(),
            },
            fail: dir.join("FAIL").exists(),
        }))
    }
}

impl LoadedModel for FlakyModel {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.fail {
            return Err(Error::internal("this version fails every batch"));
        }
        let mut y = inputs[0].clone();
        y.name = "y".into();
        Ok(vec![y])
    }
}

const FLAKY_CONFIG: &str = "backend = \"flaky\"\ndefault_model_filename = \"model.bin\"\n\
    max_batch_size = 8\nwarmup = false\n\
    [[input]]\nname = \"x\"\ndata_type = \"FP32\"\ndims = [4]\n\
    [[output]]\nname = \"y\"\ndata_type = \"FP32\"\ndims = [4]\n\
    [version_policy]\nall = true\n\
    [traffic]\n\"1\" = 50\n\"2\" = 50\n\
    [traffic_rollback]\nwindow_s = 2\nmin_requests = 20\n";

/// A server with the `flaky` backend over `root`: its HTTP and metrics addresses, its stop
/// signal (the server stops when the sender drops) and its repository.
async fn flaky_server(
    root: &Path,
) -> (
    SocketAddr,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Arc<kiln_runtime::ModelRepository>,
) {
    let mut backends = Backends::new();
    backends.register(Arc::new(Flaky));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let settings = Settings::new(
        root,
        ServerConfig {
            http_addr: any,
            grpc_addr: any,
            metrics_addr: Some(any),
            max_request_bytes: DEFAULT_MAX_BYTES,
            admin_token: None,
            allow_client_shm: false,
            limits: kiln_server::Limits::default(),
            grpc_response_compression: None,
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = kiln_server::assemble(settings, backends, Default::default())
        .await
        .expect("bind")
        .start(async move {
            let _ = stopped.await;
        })
        .await
        .expect("start repository");
    let metrics = running.metrics_addr.expect("metrics enabled");
    (running.http_addr, metrics, stop, running.repo)
}

/// The value of the `kiln_traffic_rollbacks` sample of `model` `version`, if any.
fn rollbacks(metrics: &str, model: &str, version: u64) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("kiln_traffic_rollbacks_total{")
                && l.contains(&format!("model=\"{model}\""))
                && l.contains(&format!("version=\"{version}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let model = dir.path().join("flaky");
    for v in ["1", "2"] {
        std::fs::create_dir_all(model.join(v)).expect("version directory");
        std::fs::write(model.join(v).join("model.bin"), b"").expect("model file");
    }
    std::fs::write(model.join("2").join("FAIL"), b"").expect("FAIL marker");
    write_config(dir.path(), "flaky", FLAKY_CONFIG);
    let (http, metrics, _stop, repo) = flaky_server(dir.path()).await;
    // started by the repository's start(); a second call does nothing
    repo.spawn_rollback_monitor();
    let client = kiln_testkit::http_client();
    let infer = format!("http://{http}/v2/models/flaky/infer");
    let traffic = format!("http://{http}/admin/v1/models/flaky/traffic");
    let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});

    let start = Instant::now();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    loop {
        for _ in 0..20 {
            let r = client.post(&infer).json(&body).send().await.expect("POST");
            *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
        }
        let (_, w) = read_json(client.get(&traffic).send().await.expect("GET")).await;
        if w["weights"]["2"] == 0 {
            assert_eq!(w["weights"]["1"], 50, "{w}");
            assert_eq!(w["origin"], "rollback", "{w}");
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "version 2 was not rolled back: {w}, answers {statuses:?}"
        );
    }
    assert!(statuses.get(&500).copied().unwrap_or(0) > 0, "{statuses:?}");

    let metrics = format!("http://{metrics}/metrics");
    let text = client
        .get(&metrics)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(rollbacks(&text, "flaky", 2), Some(1.0), "{text}");
    assert_eq!(rollbacks(&text, "flaky", 1), None, "{text}");

    // every request naming no version now reaches version 1, and succeeds
    for _ in 0..50 {
        let r = client.post(&infer).json(&body).send().await.expect("POST");
        let (status, v) = read_json(r).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model_version"], "1", "{v}");
    }
}
