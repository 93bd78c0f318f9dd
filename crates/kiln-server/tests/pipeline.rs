//! Pipelines served end to end: the recommend example against its NumPy reference over HTTP
//! and gRPC; independent steps running at once and model steps batching with direct callers
//! (seen in the member's batch statistics, never in timings); every refused configuration
//! naming its step; a member unloaded and loaded again; failing and timed-out steps named in
//! the error; `switch` by request parameter; a member reloaded while the pipeline serves; and
//! the pipeline's statistics and per-step metrics.

mod common;
mod pipeline_common;

use common::*;
use kiln_protocol::inference::infer_parameter::ParameterChoice as Choice;
use pipeline_common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_matches_the_reference_over_http_and_grpc() {
    let s = TestServer::temp(repo_of(&RECOMMEND), Options::default()).await;
    let (cases, tol) = recommend_golden();
    let mut c = s.grpc().await;
    for (i, case) in cases.iter().enumerate() {
        let resp = s.infer_ok("recommend", &golden_request(case)).await;
        assert_eq!(output(&resp, "item_ids")["shape"], json!([10]), "{resp}");
        check_recommend_json(&resp, case, tol, &format!("http case {i}"));

        let r = c
            .model_infer(grpc_request("recommend", &case.inputs))
            .await
            .unwrap_or_else(|e| panic!("grpc case {i}: {e:?}"))
            .into_inner();
        let ids = i64_from(grpc_raw(&r, "item_ids"));
        let scores = f32_from(grpc_raw(&r, "scores"));
        check_recommend(&ids, &scores, case, tol, &format!("grpc case {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_concurrently() {
    // The tower batches only pairs: a lone row waits a full second for company. Run one after
    // the other, the two steps would each be a batch of one; run at once, they are one pair.
    let dir = repo_of(&["user_tower"]);
    write_config(dir.path(), "user_tower", &tower_config(2, 1_000_000, &[2]));
    let step = |name: &str| {
        format!(
            "[[step]]\nname = \"{name}\"\nmodel = \"user_tower\"\n\
             input_map = {{ user_features = \"x\" }}\noutput_map = {{ user_emb = \"{name}\" }}\n"
        )
    };
    let config = pipeline_head(
        &[("x", &[1, 32])],
        &[("left", "FP32", &[1, 16]), ("right", "FP32", &[1, 16])],
    ) + &step("left")
        + &step("right");
    write_pipeline(dir.path(), "twin", &config);
    let s = TestServer::temp(dir, Options::default()).await;

    let resp = s
        .infer_ok("twin", &f32_request("x", &[1, 32], &tower_row(1)))
        .await;
    let left = output_floats(&resp, "left");
    assert_eq!(left.len(), 16);
    assert_close(&output_floats(&resp, "right"), &left, BATCH_TOL, "right");

    let stats = http_stats(&s, "user_tower").await;
    assert_eq!(stats["inference_count"], 2, "{stats}");
    assert_eq!(
        stats["execution_count"], 1,
        "both steps in one batch: {stats}"
    );
    let batches = stats["batch_stats"].as_array().expect("batch_stats");
    assert!(
        batches
            .iter()
            .any(|b| b["batch_size"] == 2 && b["compute_infer"]["count"] == 1),
        "no batch of the two steps' rows: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_and_direct_callers_share_batches() {
    // 12 single-row callers through the pipeline and 12 directly; the tower forms a batch at
    // 24 rows. A batch of more than 12 rows holds rows of both kinds of caller.
    const EACH: usize = 12;
    let dir = repo_of(&["user_tower"]);
    write_config(
        dir.path(),
        "user_tower",
        &tower_config(64, 5_000_000, &[2 * EACH as u32]),
    );
    let config = x_pipeline("FP32", &[1, 16], &tower_step(""));
    write_pipeline(dir.path(), "embed", &config);
    let s = Arc::new(TestServer::temp(dir, Options::default()).await);

    let mut tasks = Vec::new();
    for i in 0..EACH {
        for (model, input) in [("embed", "x"), ("user_tower", "user_features")] {
            let s = s.clone();
            let body = f32_request(input, &[1, 32], &tower_row(100 + i as u64));
            let out = if model == "embed" { "out" } else { "user_emb" };
            tasks.push(tokio::spawn(async move {
                output_floats(&s.infer_ok(model, &body).await, out)
            }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    for (i, pair) in answers.chunks(2).enumerate() {
        assert_eq!(pair[0].len(), 16);
        assert_close(&pair[0], &pair[1], BATCH_TOL, &format!("row {i}"));
    }

    let stats = http_stats(&s, "user_tower").await;
    assert_eq!(stats["inference_count"], 2 * EACH, "{stats}");
    let merged = stats["batch_stats"]
        .as_array()
        .expect("batch_stats")
        .iter()
        .filter(|b| b["batch_size"].as_u64().unwrap() > EACH as u64)
        .count();
    assert!(
        merged > 0,
        "no batch held both pipeline and direct rows: {stats}"
    );
    let embed = http_stats(&s, "embed").await;
    assert_eq!(
        embed["inference_stats"]["success"]["count"], EACH,
        "{embed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pipelines_are_refused_naming_the_step() {
    let dir = repo_of(&["user_tower", "coarse_rank"]);
    let refused = refused_pipelines();
    for (name, config, _, _) in &refused {
        write_pipeline(dir.path(), name, config);
    }
    let root = dir.path().to_path_buf();

    // refused at start: the index says why
    let s = TestServer::temp(dir, Options::default()).await;
    assert_eq!(s.get("/v2/models/user_tower/ready").await.0, 200);
    let index = http_index(&s).await;
    for (name, _, step, why) in &refused {
        let row =
            index_row(&index, name, None).unwrap_or_else(|| panic!("{name} not indexed: {index}"));
        assert_eq!(row["state"], "UNAVAILABLE", "{name}: {row}");
        names_step(row["reason"].as_str().unwrap_or_default(), name, step, why);
        assert_ne!(s.get(&format!("/v2/models/{name}/ready")).await.0, 200);
    }

    // refused by the load API, over the same files (kept by the first server), in explicit mode
    let opts = Options {
        mode: kiln_runtime::ControlMode::Explicit,
        ..Options::default()
    };
    let s = TestServer::start_at(root, None, opts).await;
    for member in ["user_tower", "coarse_rank"] {
        let (status, body) = load_model(&s, member).await;
        assert_eq!(status, 200, "{member}: {body}");
    }
    for (name, _, step, why) in &refused {
        let (status, body) = load_model(&s, name).await;
        assert_eq!(status, 400, "{name}: {body}");
        names_step(&error_of(&body), name, step, why);
    }
    let index = http_index(&s).await;
    for (name, _, step, why) in &refused {
        let row = index_row(&index, name, None).expect("indexed after the load API");
        assert_eq!(row["state"], "UNAVAILABLE", "{name}: {row}");
        names_step(row["reason"].as_str().unwrap_or_default(), name, step, why);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_refused_for_a_missing_member_loads_once_the_member_serves() {
    let dir = repo_of(&["user_tower"]);
    write_pipeline(
        dir.path(),
        "embed",
        &x_pipeline("FP32", &[1, 16], &tower_step("")),
    );
    let opts = Options {
        mode: kiln_runtime::ControlMode::Explicit,
        ..Options::default()
    };
    let s = TestServer::temp(dir, opts).await;
    let (status, body) = load_model(&s, "embed").await;
    assert_eq!(status, 400, "{body}");
    names_step(&error_of(&body), "embed", "step 'tower'", "user_tower");

    let (status, body) = load_model(&s, "user_tower").await;
    assert_eq!(status, 200, "{body}");
    // the pipeline's files did not change, but what it was refused for did
    let (status, body) = load_model(&s, "embed").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/v2/models/embed/ready").await.0, 200);
    let resp = s
        .infer_ok("embed", &f32_request("x", &[1, 32], &tower_row(3)))
        .await;
    assert_eq!(output_floats(&resp, "out").len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloaded_member_makes_the_pipeline_not_ready() {
    let s = TestServer::temp(repo_of(&RECOMMEND), Options::explicit_all()).await;
    let (cases, tol) = recommend_golden();
    assert_eq!(s.get("/v2/models/recommend/ready").await.0, 200);

    let (status, body) = s
        .post("/v2/repository/models/coarse_rank/unload", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get("/v2/models/recommend/ready").await;
    assert_ne!(
        status, 200,
        "recommend is ready without coarse_rank: {body}"
    );
    let index = http_index(&s).await;
    let row = index_row(&index, "recommend", Some("1")).expect("recommend indexed");
    assert_eq!(row["state"], "UNAVAILABLE", "{index}");
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("coarse_rank"), "{reason}");
    let (status, body) = s
        .post("/v2/models/recommend/infer", &golden_request(&cases[0]))
        .await;
    assert_ne!(status, 200, "{body}");
    assert!(error_of(&body).contains("coarse_rank"), "{body}");

    let (status, body) = load_model(&s, "coarse_rank").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/v2/models/recommend/ready").await.0, 200);
    let index = http_index(&s).await;
    let row = index_row(&index, "recommend", Some("1")).expect("recommend indexed");
    assert_eq!(row["state"], "READY", "{index}");
    let resp = s.infer_ok("recommend", &golden_request(&cases[0])).await;
    check_recommend_json(&resp, &cases[0], tol, "after loading coarse_rank again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_is_named_and_the_pipeline_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "lookup", LOOKUP);
    let s = TestServer::temp(dir, Options::default()).await;
    let good = lookup_request(&[3, 0], &[0.5, 2.0, -1.0, 1.0]);
    let check_good = |resp: &Value| {
        assert_eq!(
            output_floats(resp, "rows"),
            vec![9.0, 10.0, 11.0, 0.0, 1.0, 2.0]
        );
        assert_eq!(ints(&output(resp, "best")["data"]), vec![1, 3, 0]);
    };
    check_good(&s.infer_ok("lookup", &good).await);

    // an index outside the table, then k larger than the candidates
    for (req, step, cause) in [
        (
            lookup_request(&[1, 7], &[0.5, 2.0, -1.0, 1.0]),
            "pick",
            "is 7",
        ),
        (
            lookup_request(&[0, 1], &[0.5, 2.0]),
            "top",
            "k = 3 is larger",
        ),
    ] {
        let (status, body) = s.post("/v2/models/lookup/infer", &req).await;
        assert_eq!(status, 400, "{body}");
        names_step(
            &error_of(&body),
            "pipeline 'lookup'",
            &format!("step '{step}'"),
            cause,
        );
    }
    let e = s
        .grpc()
        .await
        .model_infer(grpc_request(
            "lookup",
            &lookup_request(&[4, 0], &[1.0, 2.0, 3.0])["inputs"],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("step 'pick'"), "{e:?}");

    check_good(&s.infer_ok("lookup", &good).await);
    let stats = http_stats(&s, "lookup").await;
    assert_eq!(stats["inference_stats"]["success"]["count"], 2, "{stats}");
    assert_eq!(stats["inference_stats"]["fail"]["count"], 3, "{stats}");
    let text = metrics_text(&s).await;
    let pick = ["model=\"lookup\"", "step=\"pick\""];
    assert_eq!(
        metric_sum(&text, "kiln_pipeline_step_failures_total", &pick),
        2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_and_request_timeouts_are_honoured() {
    // The tower waits five seconds for a batch of 8 that a single row never fills.
    let dir = repo_of(&["user_tower"]);
    write_config(dir.path(), "user_tower", &tower_config(64, 5_000_000, &[8]));
    for (name, extra) in [("hurried", "timeout_ms = 1\n"), ("patient", "")] {
        write_pipeline(
            dir.path(),
            name,
            &x_pipeline("FP32", &[1, 16], &tower_step(extra)),
        );
    }
    let s = TestServer::temp(dir, Options::default()).await;
    let req = f32_request("x", &[1, 32], &tower_row(2));

    // the step's own timeout
    let (status, body) = s.post("/v2/models/hurried/infer", &req).await;
    assert_eq!(status, 504, "{body}");
    let msg = error_of(&body);
    names_step(&msg, "pipeline 'hurried'", "step 'tower'", "timed out");

    // the request's timeout (microseconds) over the whole pipeline
    let timed = with_parameters(req.clone(), json!({ "timeout": 1000 }));
    let (status, body) = s.post("/v2/models/patient/infer", &timed).await;
    assert_eq!(status, 504, "{body}");
    let msg = error_of(&body);
    assert!(msg.contains("pipeline 'patient'"), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");

    // a deadline already past when the first step starts (1 us: gone while the request is
    // decoded) is a timeout too, named as one
    let gone = with_parameters(req.clone(), json!({ "timeout": 1 }));
    let (status, body) = s.post("/v2/models/patient/infer", &gone).await;
    assert_eq!(status, 504, "{body}");
    let msg = error_of(&body);
    names_step(
        &msg,
        "pipeline 'patient'",
        "step 'tower'",
        "timed out before the step started",
    );

    let mut g = grpc_request("patient", &timed["inputs"]);
    g.parameters
        .insert("timeout".into(), grpc_parameter(Choice::Int64Param(1000)));
    let e = s.grpc().await.model_infer(g).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("pipeline 'patient'"), "{e:?}");

    for name in ["hurried", "patient"] {
        let stats = http_stats(&s, name).await;
        assert_eq!(stats["inference_stats"]["success"]["count"], 0, "{stats}");
    }
    assert_eq!(
        http_stats(&s, "patient").await["inference_stats"]["fail"]["count"],
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_chooses_the_member_by_parameter() {
    // pair doubles its input, pair3 (pair's second version, served as a model of its own)
    // triples it: the answer shows which member ran.
    let dir = switch_repo();
    let s = TestServer::temp(dir, Options::default()).await;

    let x = [1.0f32, -2.0, 0.5, 4.0];
    let req =
        |ranker: &str| with_parameters(f32_request("x", &[1, 4], &x), json!({ "ranker": ranker }));
    let times = |k: f32| x.iter().map(|v| v * k).collect::<Vec<_>>();
    let resp = s.infer_ok("choose", &req("double")).await;
    assert_eq!(output_floats(&resp, "out"), times(2.0));
    let resp = s.infer_ok("choose", &req("triple")).await;
    assert_eq!(output_floats(&resp, "out"), times(3.0));
    let resp = s.infer_ok("choose", &req("double")).await;
    assert_eq!(output_floats(&resp, "out"), times(2.0));
    assert_eq!(http_stats(&s, "pair").await["inference_count"], 2);
    assert_eq!(http_stats(&s, "pair3").await["inference_count"], 1);

    // over gRPC, a string parameter
    let mut g = grpc_request("choose", &req("triple")["inputs"]);
    g.parameters.insert(
        "ranker".into(),
        grpc_parameter(Choice::StringParam("triple".into())),
    );
    let r = s.grpc().await.model_infer(g).await.unwrap().into_inner();
    assert_eq!(f32_from(grpc_raw(&r, "out")), times(3.0));

    // a value with no case and no default, and no value at all
    let (status, body) = s.post("/v2/models/choose/infer", &req("quad")).await;
    assert_eq!(status, 400, "{body}");
    let msg = error_of(&body);
    assert!(
        msg.contains("pipeline 'choose'") && msg.contains("'ranker'") && msg.contains("quad"),
        "{msg}"
    );
    let (status, body) = s
        .post("/v2/models/choose/infer", &f32_request("x", &[1, 4], &x))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("ranker"), "{body}");
    assert_eq!(http_stats(&s, "pair").await["inference_count"], 2);
    assert_eq!(http_stats(&s, "pair3").await["inference_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_reload_while_serving_fails_no_request() {
    let dir = repo_of(&RECOMMEND);
    let root = dir.path().to_path_buf();
    let opts = Options {
        mode: kiln_runtime::ControlMode::Poll(Duration::from_millis(200)),
        ..Options::default()
    };
    let s = Arc::new(TestServer::temp(dir, opts).await);
    let (cases, tol) = recommend_golden();
    let cases = Arc::new(cases);

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let traffic = recommend_traffic(s.clone(), cases.clone(), stop.clone(), answered.clone());
    let answered_at_least = |n: usize| {
        let answered = answered.clone();
        async move { answered.load(Ordering::Relaxed) >= n }
    };
    eventually("traffic runs", || answered_at_least(5)).await;

    // version 2 of coarse_rank (the same file), put in place in one rename
    let staging = root.join("coarse_rank/.staging-2");
    copy_dir(&root.join("coarse_rank/1"), &staging);
    std::fs::rename(&staging, root.join("coarse_rank/2")).unwrap();
    eventually("coarse_rank version 2 serves alone", || async {
        let index = http_index(&s).await;
        index_row(&index, "coarse_rank", Some("2")).is_some_and(|r| r["state"] == "READY")
            && index_row(&index, "coarse_rank", Some("1")).is_none()
    })
    .await;
    let mark = answered.load(Ordering::Relaxed);
    eventually("traffic goes on", || answered_at_least(mark + 5)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the reload: {failures:#?}",
        failures.len(),
        answered.load(Ordering::Relaxed)
    );

    // the pipeline now runs the new version
    let resp = s.infer_ok("recommend", &golden_request(&cases[1])).await;
    check_recommend_json(&resp, &cases[1], tol, "after the reload");
    let (status, v2) = s.get("/v2/models/coarse_rank/versions/2/stats").await;
    assert_eq!(status, 200, "{v2}");
    assert!(
        v2["model_stats"][0]["inference_count"].as_u64().unwrap() >= 1000,
        "{v2}"
    );
    let index = http_index(&s).await;
    assert_eq!(
        index_row(&index, "recommend", Some("1")).unwrap()["state"],
        "READY",
        "{index}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_and_step_metrics() {
    const N: u64 = 3;
    let s = TestServer::temp(repo_of(&RECOMMEND), Options::default()).await;
    let (cases, _) = recommend_golden();
    let before = http_stats(&s, "recommend").await;
    for case in cases.iter().take(N as usize) {
        s.infer_ok("recommend", &golden_request(case)).await;
    }
    let after = http_stats(&s, "recommend").await;
    let success = |v: &Value| {
        v["inference_stats"]["success"]["count"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(success(&after), success(&before) + N, "{after}");

    assert_ensemble_stats(&after, "recommend", N);
    // the members count their own requests
    assert_eq!(http_stats(&s, "user_tower").await["inference_count"], N);
    assert_eq!(
        http_stats(&s, "fine_rank").await["inference_count"],
        100 * N
    );

    let text = metrics_text(&s).await;
    let recall = ["model=\"recommend\"", "version=\"1\"", "step=\"recall\""];
    assert_eq!(
        metric_sum(&text, "kiln_pipeline_step_requests_total", &recall),
        N as f64,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "kiln_pipeline_step_duration_seconds_count", &recall),
        N as f64,
        "{text}"
    );
}
