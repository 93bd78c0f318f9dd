//! Triton's system shared-memory extension over HTTP and gRPC: register, status and unregister;
//! golden inputs read from a region and outputs written to one; a ranker request with one
//! input in shared memory and the other in `raw_input_contents`; and the refusals (regions
//! out of bounds, unknown, too small, wrong sizes, a server that does not allow shared memory),
//! each of which leaves the region table and the model as they were; and requests whose inputs
//! are views of one region batched together, each answer in its own slot.
//!
//! POSIX shared-memory objects are files under /dev/shm on Linux, which is how the tests
//! create, fill and read them.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use kiln_protocol::inference as pb;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

/// A shared-memory object, removed on drop.
struct Object {
    key: String,
    path: PathBuf,
}

impl Object {
    fn new(tag: &str, bytes: &[u8]) -> Object {
        let name = format!("kiln-shm-test-{tag}-{}", std::process::id());
        let path = PathBuf::from("/dev/shm").join(&name);
        std::fs::write(&path, bytes).expect("create shared-memory object");
        Object {
            key: format!("/{name}"),
            path,
        }
    }
    fn floats(&self, offset: usize, n: usize) -> Vec<f32> {
        let b = std::fs::read(&self.path).unwrap();
        b[offset..offset + 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

async fn allowing() -> TestServer {
    TestServer::start_at(
        examples(),
        None,
        Options {
            allow_client_shm: true,
            ..Default::default()
        },
    )
    .await
}

fn grpc_shm_params(region: &str, offset: u64, size: u64) -> HashMap<String, pb::InferParameter> {
    let p = |c| pb::InferParameter {
        parameter_choice: Some(c),
    };
    use pb::infer_parameter::ParameterChoice::*;
    HashMap::from([
        (
            "shared_memory_region".to_string(),
            p(StringParam(region.into())),
        ),
        (
            "shared_memory_offset".to_string(),
            p(Int64Param(offset as i64)),
        ),
        (
            "shared_memory_byte_size".to_string(),
            p(Int64Param(size as i64)),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_outputs_through_shared_memory_over_http() {
    let s = allowing().await;
    let g = golden("mlp");
    let x = floats(&g["inputs"][0]["data"]);
    let want = floats(&g["outputs"][0]["data"]);
    // input at offset 64 of its region; the output after 32 bytes of a second region
    let mut bytes = vec![0u8; 64];
    bytes.extend(le_f32(&x));
    let input = Object::new("http-in", &bytes);
    let output = Object::new("http-out", &[0u8; 4096]);
    let (st, _) = s
        .post(
            "/v2/systemsharedmemory/region/in/register",
            &json!({"key": input.key, "offset": 0, "byte_size": bytes.len()}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .post(
            "/v2/systemsharedmemory/region/out/register",
            &json!({"key": output.key, "offset": 1024, "byte_size": 1024}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, status) = s.get("/v2/systemsharedmemory/status").await;
    assert_eq!(st, 200);
    assert_eq!(
        status,
        json!([
            {"name": "in", "key": input.key, "offset": 0, "byte_size": bytes.len()},
            {"name": "out", "key": output.key, "offset": 1024, "byte_size": 1024},
        ])
    );
    let (_, md) = s.get("/v2").await;
    assert!(md["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("system_shared_memory")));

    let body = json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 256],
                    "parameters": {"shared_memory_region": "in", "shared_memory_offset": 64,
                                   "shared_memory_byte_size": 4 * x.len()}}],
        "outputs": [{"name": "y", "parameters": {"shared_memory_region": "out",
                     "shared_memory_offset": 32, "shared_memory_byte_size": 64}}],
    });
    let r = s.infer_ok("mlp", &body).await;
    let y = output_of(&r, "y");
    assert_eq!(
        y,
        &json!({"name": "y", "datatype": "FP32", "shape": [4, 1]})
    );
    // region "out" starts 1024 bytes into the object
    assert_close(
        &output.floats(1024 + 32, 4),
        &want,
        GOLDEN_TOL,
        "mlp via shm",
    );

    // refusals, each naming what is wrong
    let refused = |body: Value| {
        let s = &s;
        async move {
            let (st, v) = s.post("/v2/models/mlp/infer", &body).await;
            assert_eq!(st, 400, "{v}");
            error_of(&v)
        }
    };
    let mut bad = body.clone();
    bad["inputs"][0]["parameters"]["shared_memory_byte_size"] = json!(4 * x.len() - 4);
    let e = refused(bad).await;
    assert!(
        e.contains("input 'x'") && e.contains("shared_memory_byte_size"),
        "{e}"
    );
    let mut bad = body.clone();
    bad["inputs"][0]["parameters"]["shared_memory_offset"] = json!(128);
    let e = refused(bad).await;
    assert!(
        e.contains("Invalid offset + byte size for shared memory region: 'in'"),
        "{e}"
    );
    let mut bad = body.clone();
    bad["outputs"][0]["parameters"]["shared_memory_byte_size"] = json!(8);
    let e = refused(bad).await;
    assert!(e.contains("output 'y': needs 16 bytes"), "{e}");
    let mut bad = body.clone();
    bad["inputs"][0]["data"] = json!([0.0]);
    let e = refused(bad).await;
    assert!(e.contains("send it one way"), "{e}");
    let mut bad = body.clone();
    bad["inputs"][0]["parameters"] = json!({"shared_memory_region": "in"});
    let e = refused(bad).await;
    assert!(
        e.contains("needs parameters.shared_memory_byte_size"),
        "{e}"
    );

    // registration refusals leave the table as it was
    for (name, req, what) in [
        (
            "in",
            json!({"key": input.key, "byte_size": 8}),
            "already in manager",
        ),
        (
            "far",
            json!({"key": input.key, "offset": 1, "byte_size": bytes.len()}),
            "run past the end",
        ),
        (
            "gone",
            json!({"key": "/kiln-no-such-object", "byte_size": 8}),
            "cannot open",
        ),
        (
            "typo",
            json!({"key": input.key, "bytesize": 8}),
            "byte_size",
        ),
    ] {
        let (st, v) = s
            .post(
                &format!("/v2/systemsharedmemory/region/{name}/register"),
                &req,
            )
            .await;
        assert_eq!(st, 400, "{v}");
        assert!(error_of(&v).contains(what), "{name}: {v}");
    }
    let (_, after) = s.get("/v2/systemsharedmemory/status").await;
    assert_eq!(after, status);

    // unregister one region: it is gone from the status and from inference
    let (st, _) = s
        .post("/v2/systemsharedmemory/region/in/unregister", &Value::Null)
        .await;
    assert_eq!(st, 200);
    let (st, v) = s.get("/v2/systemsharedmemory/region/in/status").await;
    assert_eq!(st, 400, "{v}");
    let e = refused(body.clone()).await;
    assert!(
        e.contains("Unable to find shared memory region: 'in'"),
        "{e}"
    );
    let (st, one) = s.get("/v2/systemsharedmemory/region/out/status").await;
    assert_eq!((st, one.as_array().unwrap().len()), (200, 1));
    let (st, _) = s
        .post("/v2/systemsharedmemory/unregister", &Value::Null)
        .await;
    assert_eq!(st, 200);
    let (_, none) = s.get("/v2/systemsharedmemory/status").await;
    assert_eq!(none, json!([]));
}

fn output_of<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {resp}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranker_over_grpc_with_one_input_in_shared_memory() {
    let s = allowing().await;
    let mut c = s.grpc().await;
    let g = golden("ranker");
    // the golden inputs in the order the model declares them: dense FP32, ids INT64
    let mut inputs = HashMap::new();
    for i in g["inputs"].as_array().unwrap() {
        inputs.insert(i["name"].as_str().unwrap().to_string(), i.clone());
    }
    let want = floats(&g["outputs"][0]["data"]);
    let rows = want.len();
    let (ids_name, dense_name) = {
        let mut ids = None;
        let mut dense = None;
        for (n, i) in &inputs {
            if i["datatype"] == "INT64" {
                ids = Some(n.clone());
            } else {
                dense = Some(n.clone());
            }
        }
        (ids.unwrap(), dense.unwrap())
    };
    let ids: Vec<i64> = inputs[&ids_name]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let dense = floats(&inputs[&dense_name]["data"]);
    let shape = |n: &str| -> Vec<i64> {
        inputs[n]["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };

    let ids_obj = Object::new("grpc-ids", &le_i64(&ids));
    let out_obj = Object::new("grpc-out", &[0u8; 256]);
    for (name, obj, size) in [("ids", &ids_obj, 8 * ids.len()), ("scores", &out_obj, 256)] {
        c.system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest {
            name: name.into(),
            key: obj.key.clone(),
            offset: 0,
            byte_size: size as u64,
        })
        .await
        .unwrap();
    }
    let status = c
        .system_shared_memory_status(pb::SystemSharedMemoryStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<_> = status.regions.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["ids", "scores"]);
    assert_eq!(status.regions["ids"].key, ids_obj.key);

    let out_name = g["outputs"][0]["name"].as_str().unwrap().to_string();
    let req = pb::ModelInferRequest {
        model_name: "ranker".into(),
        inputs: vec![
            InferInputTensor {
                name: ids_name.clone(),
                datatype: "INT64".into(),
                shape: shape(&ids_name),
                parameters: grpc_shm_params("ids", 0, 8 * ids.len() as u64),
                contents: None,
            },
            InferInputTensor {
                name: dense_name.clone(),
                datatype: "FP32".into(),
                shape: shape(&dense_name),
                ..Default::default()
            },
        ],
        outputs: vec![InferRequestedOutputTensor {
            name: out_name.clone(),
            parameters: grpc_shm_params("scores", 16, 4 * rows as u64),
        }],
        // one raw entry: the input not in shared memory
        raw_input_contents: vec![le_f32(&dense).into()],
        ..Default::default()
    };
    let r = c.model_infer(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, out_name);
    assert_eq!(r.raw_output_contents.len(), 1);
    assert!(r.raw_output_contents[0].is_empty());
    assert_close(
        &out_obj.floats(16, rows),
        &want,
        GOLDEN_TOL,
        "ranker via shm",
    );

    // a raw entry for the shared-memory input too is one too many
    let mut bad = req.clone();
    bad.raw_input_contents.push(le_i64(&ids).into());
    let e = c.model_infer(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("not in shared memory"), "{e:?}");

    c.system_shared_memory_unregister(pb::SystemSharedMemoryUnregisterRequest::default())
        .await
        .unwrap();
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("Unable to find shared memory region"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_is_refused_unless_allowed() {
    let s = TestServer::examples().await;
    let obj = Object::new("off", &[0u8; 64]);
    let (st, v) = s
        .post(
            "/v2/systemsharedmemory/region/r/register",
            &json!({"key": obj.key, "offset": 0, "byte_size": 64}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("--allow-client-shm"), "{v}");
    let (_, md) = s.get("/v2").await;
    assert!(!md["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("system_shared_memory")));
    let mut c = s.grpc().await;
    let e = c
        .system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest {
            name: "r".into(),
            key: obj.key.clone(),
            offset: 0,
            byte_size: 64,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    // an inference naming a region fails as the region is unknown
    let body = json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                    "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 1024}}],
    });
    let (st, v) = s.post("/v2/models/mlp/infer", &body).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        error_of(&v).contains("Unable to find shared memory region"),
        "{v}"
    );
}

/// Requests whose inputs are views of one region are batched together (the scheduler copies
/// each view into the batch) and each answer lands in its own slot of the output region, equal
/// to the same rows computed one by one from JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_read_and_write_their_own_slots() {
    const N: usize = 8;
    const ROW: usize = 256;
    let s = TestServer::temp(
        mlp_repo(200_000, 64, &[], 1),
        Options {
            allow_client_shm: true,
            ..Default::default()
        },
    )
    .await;
    let rows: Vec<Vec<f32>> = (0..N)
        .map(|r| {
            (0..ROW)
                .map(|j| ((r * 31 + j) as f32 * 0.07).sin())
                .collect()
        })
        .collect();
    let mut alone = Vec::new();
    for r in &rows {
        let resp = s
            .infer_ok(
                "mlp",
                &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, ROW], "data": r}]}),
            )
            .await;
        alone.extend(floats(&output_of(&resp, "y")["data"]));
    }
    let input = Object::new("batch-in", &le_f32(&rows.concat()));
    let output = Object::new("batch-out", &[0u8; 4 * N]);
    for (name, obj, size) in [("in", &input, 4 * ROW * N), ("out", &output, 4 * N)] {
        let (st, v) = s
            .post(
                &format!("/v2/systemsharedmemory/region/{name}/register"),
                &json!({"key": obj.key, "offset": 0, "byte_size": size}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let url = s.url("/v2/models/mlp/infer");
            let body = json!({
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, ROW],
                            "parameters": {"shared_memory_region": "in",
                                           "shared_memory_offset": 4 * ROW * i,
                                           "shared_memory_byte_size": 4 * ROW}}],
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "out",
                             "shared_memory_offset": 4 * i, "shared_memory_byte_size": 4}}],
            });
            tokio::spawn(async move {
                let r = kiln_testkit::http_client()
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                read_json(r).await
            })
        })
        .collect();
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
    }
    assert_close(&output.floats(0, N), &alone, BATCH_TOL, "slots");
    let stats = http_stats(&s, "mlp").await;
    assert!(
        stats["batch_stats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["batch_size"].as_u64().unwrap() > 1),
        "no batch of more than one request: {stats}"
    );
}

/// A client that shrinks its object after registering it gets a 400 naming the region on the
/// next inference that reads or writes it, over HTTP and gRPC, and the server keeps serving
/// (reading a shrunk mapping would raise SIGBUS and kill the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrunk_object_is_a_400_not_a_crash() {
    let s = allowing().await;
    let x = row(3);
    let obj = Object::new("shrink", &[le_f32(&x), vec![0u8; 4096]].concat());
    let (st, v) = s
        .post(
            "/v2/systemsharedmemory/region/sh/register",
            &json!({"key": obj.key, "offset": 0, "byte_size": 1024 + 4096}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let body = json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                    "parameters": {"shared_memory_region": "sh", "shared_memory_byte_size": 1024}}],
        "outputs": [{"name": "y", "parameters": {"shared_memory_region": "sh",
                     "shared_memory_offset": 4096, "shared_memory_byte_size": 4}}],
    });
    s.infer_ok("mlp", &body).await;
    // the client shrinks its object to 100 bytes
    std::fs::OpenOptions::new()
        .write(true)
        .open(&obj.path)
        .and_then(|f| f.set_len(100))
        .expect("ftruncate");
    let (st, v) = s.post("/v2/models/mlp/infer", &body).await;
    assert_eq!(st, 400, "{v}");
    let e = error_of(&v);
    assert!(
        e.contains("input 'x': shared memory region 'sh'") && e.contains("shrunk to 100 bytes"),
        "{e}"
    );
    // an output into the shrunk part: the input comes inline, the output cannot be written
    let mut out_only = mlp_request(std::slice::from_ref(&x));
    out_only["outputs"] = body["outputs"].clone();
    let (st, v) = s.post("/v2/models/mlp/infer", &out_only).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        error_of(&v).contains("output 'y': shared memory region 'sh'"),
        "{v}"
    );

    let mut req = grpc_mlp(std::slice::from_ref(&x), "shrunk");
    req.raw_input_contents.clear();
    req.inputs[0].parameters = grpc_shm_params("sh", 0, 1024);
    let e = s.grpc().await.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("shrunk"), "{e:?}");
    let mut req = grpc_mlp(std::slice::from_ref(&x), "shrunk-out");
    req.outputs = vec![InferRequestedOutputTensor {
        name: "y".into(),
        parameters: grpc_shm_params("sh", 4096, 4),
    }];
    let e = s.grpc().await.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // still alive and serving, and the object was not grown back by a write
    let r = s.infer_ok("mlp", &mlp_request(&[x])).await;
    assert_eq!(output_floats(&r, "y").len(), 1);
    assert_eq!(std::fs::metadata(&obj.path).unwrap().len(), 100);
}
