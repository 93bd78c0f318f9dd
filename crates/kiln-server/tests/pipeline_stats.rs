//! A pipeline's statistics count as Triton counts an ensemble: the time its model steps queued
//! at their members is the pipeline's queue time, to the nanosecond, and the rest of the steps'
//! time is its compute time, which holds the members' whole compute.

mod common;
mod pipeline_common;

use common::*;
use pipeline_common::*;
use serde_json::Value;

fn ns(stats: &Value, field: &str) -> u64 {
    stats["inference_stats"][field]["ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("inference_stats.{field}.ns missing: {stats}"))
}

fn count(stats: &Value, field: &str) -> u64 {
    stats["inference_stats"][field]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("inference_stats.{field}.count missing: {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_queue_is_its_members_queue_and_its_compute_holds_theirs() {
    const N: u64 = 5;
    let dir = repo_of(&["user_tower"]);
    // a preferred batch of 64 is never reached by one caller: each request waits out the
    // queue delay at the member, so the queue time to account for is never zero
    write_config(dir.path(), "user_tower", &tower_config(64, 2_000, &[64]));
    write_pipeline(
        dir.path(),
        "embed",
        &x_pipeline("FP32", &[1, 16], &tower_step("")),
    );
    let s = TestServer::temp(dir, Options::default()).await;
    for i in 0..N {
        s.infer_ok("embed", &f32_request("x", &[1, 32], &tower_row(i)))
            .await;
    }

    let member = http_stats(&s, "user_tower").await;
    let pipeline = http_stats(&s, "embed").await;
    assert_eq!(count(&member, "queue"), N, "{member}");
    assert_eq!(count(&pipeline, "queue"), N, "{pipeline}");
    assert!(ns(&member, "queue") > 0, "{member}");
    assert_eq!(
        ns(&pipeline, "queue"),
        ns(&member, "queue"),
        "the pipeline's queue time is its member's\npipeline: {pipeline}\nmember: {member}"
    );
    // each step's time less its queue time encloses the member's input, infer and output
    let member_compute: u64 = ["compute_input", "compute_infer", "compute_output"]
        .iter()
        .map(|f| ns(&member, f))
        .sum();
    assert_eq!(count(&pipeline, "compute_infer"), N, "{pipeline}");
    assert!(
        ns(&pipeline, "compute_infer") >= member_compute,
        "pipeline compute {} < member compute {member_compute}\npipeline: {pipeline}\nmember: {member}",
        ns(&pipeline, "compute_infer")
    );
    assert!(
        ns(&pipeline, "success") >= ns(&pipeline, "queue") + ns(&pipeline, "compute_infer"),
        "a request's time holds its queue and compute: {pipeline}"
    );
}
