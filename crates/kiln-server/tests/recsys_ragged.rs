//! Ragged sparse inputs of the recsys backend, end to end on the bundled `dlrm_small` model:
//! a feature sent as values + lengths is batched by concatenation and scores as its padded form
//! (the model's golden outputs, within 1e-4); inconsistent lengths are refused.

mod common;

use common::*;
use safetensors::SafeTensors;
use serde_json::json;
use std::sync::Arc;

const TOL: f32 = 1e-4;

/// `input = "ragged"`: a feature sent as values + lengths (no padding) gives the same scores as
/// the padded form, alone and when the scheduler batches several requests' ragged values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragged_values_and_lengths_match_the_padded_form() {
    let dir = copy_models(&["dlrm_small"]);
    let cfg_path = dir.path().join("dlrm_small/config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let cfg = cfg.replacen(
        "name = \"sparse_1\"\ntable = \"emb.1\"\nmax_ids = 4\n",
        "name = \"sparse_1\"\ntable = \"emb.1\"\nmax_ids = 4\ninput = \"ragged\"\n",
        1,
    );
    assert!(cfg.contains("input = \"ragged\""), "{cfg}");
    let cfg = cfg.replace("max_queue_delay_us = 500", "max_queue_delay_us = 20000");
    std::fs::write(&cfg_path, cfg).unwrap();
    let bytes = std::fs::read(dir.path().join("dlrm_small/golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| f32_from(st.tensor(n).unwrap().data());
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (dense, prob) = (f32s("dense"), f32s("prob"));
    let sparse: Vec<Vec<i64>> = (0..4).map(|i| i64s(&format!("sparse_{i}"))).collect();
    let rows = prob.len();
    let s = Arc::new(TestServer::temp(dir, Options::default()).await);

    let (st_code, meta) = s.get("/v2/models/dlrm_small/config").await;
    assert_eq!(st_code, 200);
    let ragged = meta["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "sparse_1_values")
        .expect("values input listed");
    assert_eq!(ragged["allow_ragged_batch"], true, "{meta}");

    let request = |r0: usize, r1: usize| {
        let mut inputs = vec![
            json!({"name": "dense", "datatype": "FP32", "shape": [r1 - r0, 13], "data": &dense[r0 * 13..r1 * 13]}),
        ];
        for (i, ids) in sparse.iter().enumerate() {
            let part = &ids[r0 * 4..r1 * 4];
            if i == 1 {
                let values: Vec<i64> = part.iter().copied().filter(|&v| v != -1).collect();
                let lengths: Vec<i32> = part
                    .chunks(4)
                    .map(|row| row.iter().filter(|&&v| v != -1).count() as i32)
                    .collect();
                inputs.push(json!({"name": "sparse_1_values", "datatype": "INT64", "shape": [values.len()], "data": values}));
                inputs.push(json!({"name": "sparse_1_lengths", "datatype": "INT32", "shape": [r1 - r0], "data": lengths}));
            } else {
                inputs.push(json!({"name": format!("sparse_{i}"), "datatype": "INT64", "shape": [r1 - r0, 4], "data": part}));
            }
        }
        json!({ "inputs": inputs })
    };
    let all = output_floats(&s.infer_ok("dlrm_small", &request(0, rows)).await, "prob");
    assert_close(&all, &prob, TOL, "ragged batch vs golden");
    // one row per request, sent together so the scheduler concatenates ragged values
    let mut tasks = Vec::new();
    for r in 0..rows {
        let (s, body) = (s.clone(), request(r, r + 1));
        tasks.push(tokio::spawn(async move {
            output_floats(&s.infer_ok("dlrm_small", &body).await, "prob")[0]
        }));
    }
    let mut single = Vec::new();
    for t in tasks {
        single.push(t.await.unwrap());
    }
    assert_close(&single, &prob, TOL, "ragged one by one vs golden");

    // lengths that do not add up to the values are refused, naming the input
    let mut bad = request(0, 2);
    bad["inputs"][3]["data"] = json!([1, 1]); // row 0 has 4 values
    let (code, v) = s.post("/v2/models/dlrm_small/infer", &bad).await;
    assert_eq!(code, 400, "{v}");
    assert!(error_of(&v).contains("sparse_1"), "{v}");
}
