//! HTTP with the admin token, and the checks the `kiln learn` end-to-end tests share.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{pause, Learner, ProbeEvent, Server, Setup, MODEL, TOKEN};

/// One HTTP/1.1 request with the admin token; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `kiln serve`'s probability for the probe's features.
pub fn predict(port: u16, p: &ProbeEvent) -> f32 {
    let mut genres: Vec<String> = p.genres.clone();
    genres.resize(4, String::new());
    let req = json!({"inputs": [
        {"name": "user_id", "shape": [1, 1], "datatype": "BYTES", "data": [p.user]},
        {"name": "item_id", "shape": [1, 1], "datatype": "BYTES", "data": [p.item]},
        {"name": "genres", "shape": [1, 4], "datatype": "BYTES", "data": genres},
        {"name": "hour", "shape": [1, 1], "datatype": "INT64", "data": [p.hour]},
    ]});
    let (status, body) = http(
        port,
        "POST",
        &format!("/v2/models/{MODEL}/infer"),
        &req.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["outputs"][0]["data"][0].as_f64().unwrap() as f32
}

/// The rows of `keys` of `table` on a rows endpoint (`None`: no row).
pub fn rows(port: u16, table: &str, keys: &[u64]) -> Vec<Option<Vec<f64>>> {
    let list: Vec<String> = keys.iter().map(u64::to_string).collect();
    let path = format!(
        "/admin/v1/models/{MODEL}/tables/{table}/rows?keys={}",
        list.join(",")
    );
    let (status, body) = http(port, "GET", &path, "");
    assert_eq!(status, 200, "{path}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["values"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap()).collect())
        })
        .collect()
}

/// The learner's values of `(table, key)` pairs (dim 1).
pub fn learner_rows(l: &Learner, keys: &[(String, u64)]) -> Vec<Option<f32>> {
    keys.iter()
        .map(|(t, k)| rows(l.metrics, t, &[*k])[0].as_ref().map(|v| v[0] as f32))
        .collect()
}

/// A metric's value (summed over label sets) on a `/metrics` endpoint.
pub fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http(port, "GET", "/metrics", "");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until a learner metric reaches `at_least`.
pub fn wait_metric(l: &Learner, name: &str, at_least: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if metric(l.metrics, name) >= at_least {
            return;
        }
        pause(20);
    }
    panic!("{name} did not reach {at_least}");
}

/// Waits until the probe is learned and the server's rows of every key equal the learner's.
pub fn wait_until_converged(
    _t: &Setup,
    server: &Server,
    learner: &Learner,
    keys: &BTreeMap<String, BTreeSet<u64>>,
    probe: &ProbeEvent,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        let learned = learner_rows(learner, &probe.keys(_t))
            .iter()
            .all(Option::is_some);
        if learned {
            let mut diff = None;
            for (table, keys) in keys {
                let keys: Vec<u64> = keys.iter().copied().collect();
                let ours = rows(learner.metrics, table, &keys);
                let served = rows(server.http, table, &keys);
                for ((k, a), b) in keys.iter().zip(&ours).zip(&served) {
                    let same = match (a, b) {
                        (Some(a), Some(b)) => a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6),
                        (None, _) => true,
                        _ => false,
                    };
                    if !same && diff.is_none() {
                        diff = Some(format!("{table}/{k}: learner {a:?}, server {b:?}"));
                    }
                }
            }
            match diff {
                None => return,
                Some(d) => last = d,
            }
        }
        pause(100);
    }
    panic!("the server's rows did not converge to the learner's: {last}");
}

/// `(source, table, last_sequence)` of every delta source the server applied.
pub fn server_sources(s: &Server) -> Vec<(String, String, u64)> {
    let (status, body) = http(
        s.http,
        "GET",
        &format!("/admin/v1/models/{MODEL}/tables"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out = Vec::new();
    for t in v["tables"].as_array().unwrap() {
        for src in t["sources"].as_array().unwrap() {
            out.push((
                src["source"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
                src["last_sequence"].as_u64().unwrap(),
            ));
        }
    }
    out
}

/// Every applied delta is one sequence number of one source: applied = sum of the sources'
/// last sequence numbers, so none was applied twice (and none skipped).
pub fn no_double_apply(s: &Server) {
    // versions that share a table list it once each: count each (source, table) once
    let mut sources = server_sources(s);
    sources.sort();
    sources.dedup();
    let seqs: u64 = sources.iter().map(|(_, _, q)| q).sum();
    let applied = metric(s.metrics, "kiln_embed_deltas_applied_total") as u64;
    assert_eq!(
        applied, seqs,
        "deltas applied vs sequence numbers: {sources:?}"
    );
}
