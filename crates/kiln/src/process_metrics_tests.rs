//! Tests of the process collector: the `/proc` parsing, and the `/metrics` of a server and of a
//! cache started in process, each with the collector registered as its subcommand registers it,
//! parsed as OpenMetrics.

use super::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `/proc/self/stat` line whose command name holds spaces and a parenthesis.
const STAT: &str = "4242 (kiln (a b)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 12345 1048576 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 \
                    0 0 0 0";

#[test]
fn parses_proc_self_stat() {
    let s = parse_stat(STAT, 100.0, 4096, 1_700_000_000.0).expect("parses");
    assert_eq!(
        s,
        ProcessStats {
            cpu_seconds: 3.0,
            resident_bytes: 300 * 4096,
            virtual_bytes: 1_048_576,
            threads: 7,
            start_time_seconds: 1_700_000_123.45,
            open_fds: None,
            max_fds: None,
        }
    );
    assert_eq!(parse_stat("4242 (kiln) S 1 2", 100.0, 4096, 0.0), None);
    assert_eq!(parse_stat("no command name", 100.0, 4096, 0.0), None);
    assert_eq!(
        boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
        Some(1.7e9)
    );
}

/// Checks that `text` is an OpenMetrics exposition as far as these tests need: every sample
/// belongs to the family declared (`# TYPE`) just before it, no family is declared twice,
/// samples have a numeric value, and one `# EOF` ends the text. Returns the samples without
/// labels, by name.
fn parse_openmetrics(text: &str) -> HashMap<String, f64> {
    assert!(
        text.ends_with("# EOF\n"),
        "no terminator at the end:\n{text}"
    );
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let mut declared: HashMap<String, String> = HashMap::new();
    let mut family: Option<(String, String)> = None;
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            let prior = declared.insert(name.to_string(), kind.to_string());
            assert!(prior.is_none(), "family {name} declared twice:\n{text}");
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = series.split('{').next().unwrap_or(series);
        let (fam, kind) = family.as_ref().expect("a sample before any TYPE");
        let suffix = name
            .strip_prefix(fam.as_str())
            .unwrap_or_else(|| panic!("sample {name} outside its family {fam}:\n{text}"));
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name} in {kind} {fam}");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        if !series.contains('{') {
            samples.insert(name.to_string(), v);
        }
    }
    samples
}

/// Checks the process series in a scrape: present once, and plausible.
fn check_process_series(text: &str) {
    let s = parse_openmetrics(text);
    let get = |n: &str| *s.get(n).unwrap_or_else(|| panic!("no {n} in\n{text}"));
    assert!(get("process_resident_memory_bytes") > 0.0);
    assert!(get("process_virtual_memory_bytes") >= get("process_resident_memory_bytes"));
    assert!(get("process_cpu_seconds_total") >= 0.0);
    assert!(get("process_threads") >= 1.0);
    assert!(get("process_open_fds") >= 1.0);
    assert!(get("process_max_fds") >= get("process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let start = get("process_start_time_seconds");
    assert!(start > 1.0e9 && start <= now + 1.0, "start time {start}");
    assert!(
        text.contains("# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n"),
        "{text}"
    );
}

#[test]
fn a_registry_with_the_collector_is_valid_openmetrics() {
    let mut registry = Registry::default();
    let c = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register("kiln_test_events", "events", c.clone());
    c.inc();
    ProcessCollector::register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    check_process_series(&text);
    assert_eq!(parse_openmetrics(&text)["kiln_test_events_total"], 1.0);
}

/// `GET /metrics` on `addr`: the body of a 200 answer with the OpenMetrics content type.
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_string()
}

#[tokio::test]
async fn the_servers_metrics_include_process_metrics_once() {
    let repo = tempfile::tempdir().expect("temp dir");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let config = kiln_server::ServerConfig {
        http_addr: any,
        grpc_addr: any,
        metrics_addr: Some(any),
        max_request_bytes: 1 << 20,
        admin_token: None,
        allow_client_shm: false,
        limits: kiln_server::Limits::default(),
        grpc_response_compression: None,
    };
    // as `kiln serve` builds its registry
    let mut registry = Registry::default();
    ProcessCollector::register(&mut registry);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = kiln_server::assemble(
        kiln_server::Settings::new(repo.path(), config),
        kiln_runtime::Backends::new(),
        registry,
    )
    .await
    .expect("assemble")
    .start(async move {
        let _ = stopped.await;
    })
    .await
    .expect("start");
    let text = scrape(running.metrics_addr.expect("metrics enabled")).await;
    check_process_series(&text);
    assert!(
        text.contains("# TYPE kiln_"),
        "runtime metrics too:\n{text}"
    );
    let _ = stop.send(());
    running.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn the_caches_metrics_include_process_metrics_once() {
    use kiln_datacache::cache::CacheConfig;
    use kiln_datacache::service::{CacheService, ServiceConfig};
    use kiln_datacache::source::{Credentials, SourceConfig, SourceSpec};
    let data = tempfile::tempdir().expect("temp dir");
    std::fs::write(data.path().join("a.txt"), b"hello").expect("write");
    let cache = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", data.path().display());
    let config = ServiceConfig {
        source: SourceConfig {
            spec: SourceSpec::parse(&url).expect("source"),
            endpoint: None,
            region: "us-east-1".into(),
            credentials: Credentials::default(),
            request_timeout: Duration::from_secs(5),
            retries: 0,
            hdfs_user: None,
        },
        cache: CacheConfig {
            dir: cache.path().to_path_buf(),
            memory_bytes: 16 << 20,
            disk_bytes: 64 << 20,
            block_size: 1 << 20,
            readahead_blocks: 0,
            read_timeout: Duration::from_secs(5),
        },
        manifest: None,
        meta_ttl: Duration::from_secs(3600),
    };
    let svc = std::sync::Arc::new(CacheService::open(config).await.expect("open the cache"));
    // as `kiln cache mount` adds it
    svc.metrics.register_collector(ProcessCollector::boxed());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = kiln_datacache::admin::serve(
        svc.clone(),
        "127.0.0.1:0".parse().expect("address"),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("admin endpoint");
    let text = scrape(addr).await;
    check_process_series(&text);
    assert!(
        text.contains("# TYPE kiln_cache_"),
        "cache metrics too:\n{text}"
    );
    let _ = stop.send(());
    task.await.expect("join");
    svc.close().await.expect("close");
}
