//! `GET /admin/v1/models/{m}[/versions/{v}]/tables/{t}/rows?keys=...` on the bundled wide model
//! `ctr_wide`: rows written by a delta read back as written, a key without a row is `null`
//! (default rows are not materialized), the admin token is required as on the delta routes,
//! and bad `keys` are refused naming the parameter.

mod common;

use common::*;
use serde_json::Value;

const TOKEN: &str = "rows-token";

async fn start() -> TestServer {
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        ..Options::default()
    };
    TestServer::temp(copy_models(&["ctr_wide"]), opts).await
}

async fn get_auth(s: &TestServer, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = s.client.get(s.url(path));
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    read_json(r.send().await.expect("GET")).await
}

/// The seeded row of `id` in `feature`'s table, from the generator's golden file.
fn seeded(feature: &str, id: &str) -> (u64, f32) {
    let text = std::fs::read_to_string(examples().join("ctr_wide/golden.json")).expect("golden");
    let g: Value = serde_json::from_str(&text).expect("golden JSON");
    let row = g["rows"][feature]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["id"] == id)
        .expect("seeded id");
    (
        row["key"].as_u64().expect("key"),
        row["weight"].as_f64().expect("weight") as f32,
    )
}

fn values(row: &Value) -> Option<Vec<f32>> {
    row["values"].as_array().map(|a| {
        a.iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_back_what_deltas_wrote() {
    let s = start().await;
    let (u1, w1) = seeded("user_id", "u1");
    let delta = kiln_embed::Delta {
        source: "rows-test".into(),
        seq: 1,
        dim: 1,
        keys: vec![5, 7, u1],
        values: vec![0.25, -1.5, 0.1],
        ..Default::default()
    };
    let r = s
        .client
        .post(s.url("/admin/v1/models/ctr_wide/tables/user_id/deltas"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(delta.encode())
        .send()
        .await
        .expect("POST delta");
    let (st, v) = read_json(r).await;
    assert_eq!(st, 200, "{v}");

    let (u42, w42) = seeded("user_id", "u42");
    let q = format!("keys=7,5,{u1},12345,{u42}");
    for path in [
        format!("/admin/v1/models/ctr_wide/tables/user_id/rows?{q}"),
        format!("/admin/v1/models/ctr_wide/versions/1/tables/user_id/rows?{q}"),
    ] {
        let (st, v) = get_auth(&s, &path, Some(TOKEN)).await;
        assert_eq!(st, 200, "{path}: {v}");
        assert_eq!(v["model"], "ctr_wide", "{v}");
        assert_eq!(v["version"], "1", "{v}");
        assert_eq!(v["table"], "user_id", "{v}");
        assert_eq!(v["dim"], 1, "{v}");
        let rows = v["rows"].as_array().expect("rows");
        let keys: Vec<u64> = rows.iter().map(|r| r["key"].as_u64().unwrap()).collect();
        assert_eq!(keys, [7, 5, u1, 12345, u42], "{v}");
        assert_eq!(values(&rows[0]), Some(vec![-1.5]), "{v}");
        assert_eq!(values(&rows[1]), Some(vec![0.25]), "{v}");
        assert_eq!(
            values(&rows[2]),
            Some(vec![0.1]),
            "overwritten, was {w1}: {v}"
        );
        // no row: null, not the zeros a lookup would use
        assert!(rows[3]["values"].is_null(), "{v}");
        assert_eq!(values(&rows[4]), Some(vec![w42]), "seeded row: {v}");
    }

    // unknown table, unknown version
    let (st, v) = get_auth(
        &s,
        "/admin/v1/models/ctr_wide/tables/nope/rows?keys=1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 404, "{v}");
    assert!(error_of(&v).contains("nope"), "{v}");
    let (st, v) = get_auth(
        &s,
        "/admin/v1/models/ctr_wide/versions/9/tables/user_id/rows?keys=1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_need_the_admin_token_and_good_keys() {
    let s = start().await;
    let path = "/admin/v1/models/ctr_wide/tables/genres/rows?keys=1";
    let (st, v) = get_auth(&s, path, None).await;
    assert_eq!(st, 401, "no token: {v}");
    let (st, v) = get_auth(&s, path, Some("wrong")).await;
    assert_eq!(st, 401, "wrong token: {v}");
    let (st, v) = get_auth(
        &s,
        "/admin/v1/models/ctr_wide/versions/1/tables/genres/rows?keys=1",
        None,
    )
    .await;
    assert_eq!(st, 401, "no token, versioned: {v}");

    let many = (0..10_001).map(|k| k.to_string()).collect::<Vec<_>>();
    for bad in [
        "keys=abc".to_string(),
        "keys=1,-2".to_string(),
        "keys=1,,2".to_string(),
        "keys=18446744073709551616".to_string(),
        "keys=".to_string(),
        "other=1".to_string(),
        format!("keys={}", many.join(",")),
    ] {
        let path = format!("/admin/v1/models/ctr_wide/tables/genres/rows?{bad}");
        let (st, v) = get_auth(&s, &path, Some(TOKEN)).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(error_of(&v).contains("keys"), "{bad}: {v}");
    }
    // 10,000 keys is the limit, not over it
    let path = format!(
        "/admin/v1/models/ctr_wide/tables/genres/rows?keys={}",
        many[..10_000].join(",")
    );
    let (st, v) = get_auth(&s, &path, Some(TOKEN)).await;
    assert_eq!(st, 200, "{}", error_of(&v));
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(10_000));
}
