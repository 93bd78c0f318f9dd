//! `kiln serve --sched-batch` puts every thread of the server under `SCHED_BATCH` (network,
//! compute, the engines' own), and serves as before; without the flag every thread keeps the
//! normal policy. A gRPC flow-control window outside HTTP/2's range is refused at start,
//! naming the flag.

#![cfg(target_os = "linux")]

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

/// `SCHED_OTHER` and `SCHED_BATCH` as `/proc/<pid>/task/<tid>/stat` reports them.
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// (thread name, scheduling policy) of every thread of `pid`.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // after "pid (comm) ": field 3 (state) onwards; the policy is field 41
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = rest.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        let name = fs::read_to_string(dir.join("comm")).unwrap();
        out.push((name.trim().to_string(), policy));
    }
    out
}

/// A repository with the example `mlp` alone.
fn mlp_repo(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("models");
    let from = repo_root().join("examples/models/mlp");
    let to = repo.join("mlp");
    fs::create_dir_all(to.join("1")).unwrap();
    fs::copy(from.join("config.toml"), to.join("config.toml"))
        .unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
    fs::copy(from.join("1/model.onnx"), to.join("1/model.onnx")).unwrap();
    repo
}

/// One mlp request of one row, answered with 200.
fn infer_mlp(port: u16) {
    let data: Vec<String> = (0..256).map(|i| format!("{}", i as f32 / 256.0)).collect();
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1,256],\"data\":[{}]}}]}}",
        data.join(",")
    );
    let (status, text) = http(port, "POST", "/v2/models/mlp/infer", &body);
    assert_eq!(status, 200, "{text}");
}

/// Checks every thread's policy, after a request has run so the model's worker exists.
fn check(pid: u32, want: u32) {
    let threads = thread_policies(pid);
    assert!(
        threads.iter().any(|(n, _)| n.starts_with("kiln-io")),
        "no network thread among {threads:?}"
    );
    assert!(
        threads.iter().any(|(n, _)| n.starts_with("kiln-mlp")),
        "no mlp worker thread among {threads:?}"
    );
    for (name, policy) in &threads {
        assert_eq!(*policy, want, "thread {name}: policy {policy}, want {want}");
    }
}

#[test]
fn sched_batch_covers_every_thread_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let repo = mlp_repo(dir.path());
    let server = serve(&repo, dir.path(), &["--sched-batch"]);
    infer_mlp(server.http);
    check(server.child.id(), SCHED_BATCH);
    let log = fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("SCHED_BATCH"), "start-up log: {log}");
}

#[test]
fn without_the_flag_threads_keep_the_normal_policy() {
    let dir = tempfile::tempdir().unwrap();
    let repo = mlp_repo(dir.path());
    let server = serve(&repo, dir.path(), &[]);
    infer_mlp(server.http);
    check(server.child.id(), SCHED_OTHER);
}

#[test]
fn a_grpc_window_outside_http2_range_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let repo = mlp_repo(dir.path());
    for (flag, value) in [
        ("--grpc-stream-window", "1000"),
        ("--grpc-connection-window", "4294967295"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--model-repository")
            .arg(&repo)
            .args(["--http-port", "0", "--grpc-port", "0", "--no-metrics"])
            .args([flag, value])
            .output()
            .expect("run kiln serve");
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&flag[2..]) && err.contains("65535"),
            "{flag} {value}: {err}"
        );
    }
}
