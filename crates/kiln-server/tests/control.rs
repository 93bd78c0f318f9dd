//! Nobody changes what is served without permission: with `--admin-token`, repository load
//! and unload and shared-memory register and unregister need the token over HTTP and gRPC
//! (the `Bearer` scheme in any case); every state change is logged at info with the caller's
//! address; and the repository index and load errors never show the server's paths.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use serde_json::json;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use tonic::{Code, Request};

const TOKEN: &str = "s3cret-token";

/// Everything logged at info and above by this test binary.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once for the whole binary.
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let sub = tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("one subscriber");
    });
}

/// Log lines that contain every one of `needles`.
fn logged(needles: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(String::from)
        .collect()
}

async fn guarded(models: &[&str]) -> TestServer {
    TestServer::temp(
        copy_models(models),
        Options {
            admin_token: Some(TOKEN.into()),
            allow_client_shm: true,
            ..Options::explicit_all()
        },
    )
    .await
}

async fn post_with(s: &TestServer, path: &str, auth: Option<&str>, body: serde_json::Value) -> u16 {
    let mut r = s.client.post(s.url(path)).json(&body);
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.send().await.expect("POST").status().as_u16()
}

fn with_auth<T>(msg: T, auth: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", auth.parse().expect("metadata"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_load_and_unload_need_the_token_over_http() {
    capture_logs();
    let s = guarded(&["mlp"]).await;
    let unload = "/v2/repository/models/mlp/unload";
    let load = "/v2/repository/models/mlp/load";
    assert_eq!(post_with(&s, unload, None, json!({})).await, 401);
    assert_eq!(
        post_with(&s, unload, Some("Bearer wrong"), json!({})).await,
        401
    );
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200, "still serving");
    assert_eq!(post_with(&s, load, None, json!({})).await, 401);
    // the scheme is case-insensitive (RFC 7235)
    let auth = format!("bearer {TOKEN}");
    assert_eq!(post_with(&s, unload, Some(&auth), json!({})).await, 200);
    assert_ne!(s.get("/v2/models/mlp/ready").await.0, 200);
    let auth = format!("BEARER {TOKEN}");
    assert_eq!(post_with(&s, load, Some(&auth), json!({})).await, 200);
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200);
    // reading the index needs no token
    assert_eq!(s.post("/v2/repository/index", &json!({})).await.0, 200);

    // the other tests of this binary log too: the HTTP front end's lines are these
    let http = "kiln_server::http";
    let lines = logged(&[http, "repository unload", "model=mlp", "caller=127.0.0.1:"]);
    assert_eq!(lines.len(), 1, "refused calls change nothing: {lines:?}");
    assert!(lines[0].contains("ok=true"), "{lines:?}");
    assert_eq!(
        logged(&[
            http,
            "repository load",
            "model=mlp",
            "caller=127.0.0.1:",
            "ok=true"
        ])
        .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_load_and_unload_need_the_token_over_grpc() {
    capture_logs();
    let s = guarded(&["mlp"]).await;
    let mut c = s.grpc().await;
    let unload = || pb::RepositoryModelUnloadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    };
    let load = || pb::RepositoryModelLoadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    };
    let e = c.repository_model_unload(unload()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c
        .repository_model_load(with_auth(load(), "Bearer nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200, "still serving");
    c.repository_model_unload(with_auth(unload(), &format!("bEaReR {TOKEN}")))
        .await
        .expect("unload with the token");
    assert_ne!(s.get("/v2/models/mlp/ready").await.0, 200);
    c.repository_model_load(with_auth(load(), &format!("Bearer {TOKEN}")))
        .await
        .expect("load with the token");
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200);
    let grpc_unloads = logged(&[
        "kiln_server::grpc",
        "repository unload",
        "model=mlp",
        "caller=127.0.0.1:",
        "ok=true",
    ]);
    assert!(
        !grpc_unloads.is_empty(),
        "no audit line for the gRPC unload"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_registration_needs_the_token() {
    capture_logs();
    let s = guarded(&["mlp"]).await;
    let name = format!("kiln-control-{}", std::process::id());
    let path = std::path::Path::new("/dev/shm").join(&name);
    std::fs::write(&path, [0u8; 4096]).expect("shared-memory object");
    let key = format!("/{name}");
    let body = json!({"key": key, "offset": 0, "byte_size": 1024});
    let register = "/v2/systemsharedmemory/region/ctl/register";
    assert_eq!(post_with(&s, register, None, body.clone()).await, 401);
    assert_eq!(s.get("/v2/systemsharedmemory/status").await.1, json!([]));
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(post_with(&s, register, Some(&auth), body).await, 200);
    let unregister = "/v2/systemsharedmemory/region/ctl/unregister";
    assert_eq!(post_with(&s, unregister, None, json!({})).await, 401);
    assert_eq!(
        post_with(&s, "/v2/systemsharedmemory/unregister", None, json!({})).await,
        401
    );
    assert_eq!(
        s.get("/v2/systemsharedmemory/status")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(post_with(&s, unregister, Some(&auth), json!({})).await, 200);
    assert!(!logged(&[
        "shared memory region registered",
        "region=ctl",
        "caller=127.0.0.1:"
    ])
    .is_empty());
    assert!(!logged(&["shared memory region unregistered", "region=ctl"]).is_empty());

    // gRPC
    let mut c = s.grpc().await;
    let reg = || pb::SystemSharedMemoryRegisterRequest {
        name: "g".into(),
        key: key.clone(),
        offset: 0,
        byte_size: 64,
    };
    let e = c.system_shared_memory_register(reg()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    c.system_shared_memory_register(with_auth(reg(), &auth))
        .await
        .expect("register with the token");
    let unreg = || pb::SystemSharedMemoryUnregisterRequest { name: "g".into() };
    let e = c
        .system_shared_memory_unregister(unreg())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    c.system_shared_memory_unregister(with_auth(unreg(), &auth))
        .await
        .expect("unregister with the token");
    let _ = std::fs::remove_file(&path);
}

/// A model directory whose weights are garbage and one whose `config.toml` does not parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_and_load_errors_show_no_server_paths() {
    let dir = copy_models(&["mlp"]);
    let root = dir.path().to_path_buf();
    copy_dir(&root.join("mlp"), &root.join("corrupt"));
    for e in std::fs::read_dir(root.join("corrupt/1")).unwrap() {
        std::fs::write(e.unwrap().path(), b"not a model at all").unwrap();
    }
    copy_dir(&root.join("mlp"), &root.join("badconfig"));
    write_config(&root, "badconfig", "max_batch_size = \"many\"\n");
    // datatypes are spelled in capitals in config.toml too, as over HTTP and gRPC
    copy_dir(&root.join("mlp"), &root.join("lowercase"));
    let lower = mlp_config(0, 8, &[], 1).replace("\"FP32\"", "\"fp32\"");
    write_config(&root, "lowercase", &lower);
    let s = TestServer::temp(
        dir,
        Options {
            mode: kiln_runtime::ControlMode::Explicit,
            ..Default::default()
        },
    )
    .await;
    let abs = [
        root.display().to_string(),
        root.canonicalize().unwrap().display().to_string(),
    ];
    let clean = |what: &str, msg: &str| {
        for a in &abs {
            assert!(
                !msg.contains(a.as_str()),
                "{what} shows the server path {a}: {msg}"
            );
        }
    };
    for model in ["corrupt", "badconfig"] {
        let (st, v) = s
            .post(&format!("/v2/repository/models/{model}/load"), &json!({}))
            .await;
        assert_ne!(st, 200, "{model} loaded");
        let msg = error_of(&v);
        clean(&format!("load of {model}"), &msg);
        let e = s
            .grpc()
            .await
            .repository_model_load(pb::RepositoryModelLoadRequest {
                model_name: model.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        clean(&format!("gRPC load of {model}"), e.message());
    }
    let (_, v) = s
        .post("/v2/repository/models/badconfig/load", &json!({}))
        .await;
    assert!(error_of(&v).contains("badconfig/config.toml"), "{v}");
    let (st, v) = s
        .post("/v2/repository/models/lowercase/load", &json!({}))
        .await;
    assert_eq!(st, 400, "{v}");
    let msg = error_of(&v);
    assert!(
        msg.contains("lowercase/config.toml") && msg.contains("fp32"),
        "{msg}"
    );
    clean("load of lowercase", &msg);
    let index = http_index(&s).await;
    for model in ["corrupt", "badconfig"] {
        let row = index_row(&index, model, None).unwrap_or_else(|| panic!("{model} in {index}"));
        let reason = row["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{row}");
        clean(&format!("index reason of {model}"), reason);
    }
    let r = s
        .grpc()
        .await
        .repository_index(pb::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    for m in r.models {
        clean(&format!("gRPC index reason of {}", m.name), &m.reason);
    }
}

/// An applied embedding delta is logged with the caller's address, the table and the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_deltas_are_logged_with_the_caller() {
    capture_logs();
    let s = guarded(&["dlrm_small"]).await;
    let auth = format!("Bearer {TOKEN}");
    let r = s
        .client
        .get(s.url("/admin/v1/models/dlrm_small/tables"))
        .header("Authorization", &auth)
        .send()
        .await
        .expect("GET tables");
    let (st, tables) = read_json(r).await;
    assert_eq!(st, 200, "{tables}");
    let dim = tables["tables"][0]["dim"].as_u64().expect("dim") as usize;
    let table = tables["tables"][0]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let delta = kiln_embed::Delta {
        source: "audit-test".into(),
        seq: 1,
        dim,
        keys: vec![3, 5],
        values: vec![0.25; 2 * dim],
        ..Default::default()
    };
    let url = s.url(&format!(
        "/admin/v1/models/dlrm_small/tables/{table}/deltas"
    ));
    let r = s
        .client
        .post(&url)
        .header("Authorization", &auth)
        .body(delta.encode())
        .send()
        .await
        .expect("POST delta");
    let (st, v) = read_json(r).await;
    assert_eq!(st, 200, "{v}");
    let lines = logged(&[
        "embedding delta applied",
        "caller=127.0.0.1:",
        "model=\"dlrm_small\"",
        &format!("table=\"{table}\""),
        "rows=2",
    ]);
    let loose = logged(&["embedding delta applied"]);
    assert_eq!(lines.len(), 1, "{loose:?}");
}
