//! Harness of the monitoring end-to-end test: the Debian `prometheus` and
//! `prometheus-alertmanager` binaries started on loopback port 0 with test-only configuration
//! (1 s scrapes and evaluations, the project's alert rules with every window and `for` shortened),
//! a webhook receiver standing in for the on-call tool, Prometheus' HTTP API, and the queries of
//! the Grafana dashboards with their variables filled in.

#![allow(dead_code)]

mod panels;
pub use panels::*;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::learn_common::pause;

/// The Prometheus and Alertmanager binaries, as Debian installs them.
pub struct Binaries {
    pub prometheus: PathBuf,
    pub alertmanager: PathBuf,
}

/// Finds `prometheus` and `prometheus-alertmanager` (`alertmanager` elsewhere) on `PATH` or in
/// `/usr/bin`; `Err` names what is missing.
pub fn binaries() -> Result<Binaries, String> {
    let find = |names: &[&str]| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        dirs.push(PathBuf::from("/usr/bin"));
        names
            .iter()
            .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
            .find(|p| p.is_file())
    };
    let prometheus = find(&["prometheus"]);
    let alertmanager = find(&["prometheus-alertmanager", "alertmanager"]);
    match (prometheus, alertmanager) {
        (Some(prometheus), Some(alertmanager)) => Ok(Binaries {
            prometheus,
            alertmanager,
        }),
        _ => Err(
            "the Debian packages prometheus and prometheus-alertmanager are not installed \
                  (scripts/setup-system.sh installs them)"
                .into(),
        ),
    }
}

/// A Prometheus or Alertmanager process, stopped on drop; its log is printed if the test failed.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    name: &'static str,
    /// The port it listens on.
    pub port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} log (last 60 lines) ---\n{}",
                self.name,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// Starts `bin` with `args` (one of them `--web.listen-address=127.0.0.1:0`) and reads the
/// port it chose from its `msg="Listening on" address=127.0.0.1:PORT` log line.
fn start(name: &'static str, bin: &Path, args: &[String], log: PathBuf) -> Daemon {
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut d = Daemon {
        child,
        log,
        name,
        port: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = fs::read_to_string(&d.log).unwrap_or_default();
        let port = text
            .lines()
            .filter(|l| l.contains("msg=\"Listening on\""))
            .find_map(|l| l.split("address=127.0.0.1:").nth(1))
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok());
        if let Some(port) = port {
            d.port = port;
            return d;
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("{name} exited with {status}:\n{text}");
        }
        pause(50);
    }
    panic!("{name} did not say where it listens");
}

/// Starts Alertmanager routing every alert to `webhook` (grouped by alert and model, 1 s waits,
/// resolved alerts sent too).
pub fn alertmanager(bin: &Path, dir: &Path, webhook: u16) -> Daemon {
    let config = dir.join("alertmanager.yml");
    fs::write(
        &config,
        format!(
            "route:\n  receiver: webhook\n  group_by: [alertname, model]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: webhook\n    \
             webhook_configs:\n      - url: http://127.0.0.1:{webhook}/alerts\n        \
             send_resolved: true\n"
        ),
    )
    .unwrap();
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", dir.join("alertmanager-data").display()),
        "--web.listen-address=127.0.0.1:0".into(),
        "--cluster.listen-address=".into(),
    ];
    start("alertmanager", bin, &args, dir.join("alertmanager.log"))
}

/// Starts Prometheus scraping each `(job, port)` every second, evaluating `rules` every second
/// and sending alerts to Alertmanager on `alertmanager`.
pub fn prometheus(
    bin: &Path,
    dir: &Path,
    rules: &Path,
    alertmanager: u16,
    jobs: &[(&str, u16)],
) -> Daemon {
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: \
         ['127.0.0.1:{alertmanager}']\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for (job, port) in jobs {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ));
    }
    let path = dir.join("prometheus.yml");
    fs::write(&path, config).unwrap();
    let args = [
        format!("--config.file={}", path.display()),
        format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ),
        "--web.listen-address=127.0.0.1:0".into(),
        "--rules.alert.resend-delay=1s".into(),
    ];
    start("prometheus", bin, &args, dir.join("prometheus.log"))
}

/// Seconds in a Prometheus duration such as `5m`, `1h30m` or `90s`; `None` if it is not one.
fn seconds(d: &str) -> Option<u64> {
    let mut total = 0;
    let mut num = String::new();
    let mut chars = d.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => return None, // milliseconds: left alone
            ('s', _) => 1,
            ('m', _) => 60,
            ('h', _) => 3600,
            ('d', _) => 86_400,
            ('w', _) => 604_800,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

/// `d` sixty times shorter (an hour becomes a minute), at least `floor` seconds.
fn shorter(d: &str, floor: u64) -> Option<String> {
    seconds(d).map(|s| format!("{}s", (s / 60).max(floor)))
}

/// The rules file with time compressed for a test: every range (`[1h]`, `[30m:1m]`) and
/// `for:` sixty times shorter, ranges at least 5 s (five 1 s scrapes) and `for` at least 1 s.
pub fn shorten_rules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(d) = trimmed.strip_prefix("for:") {
            let indent = &line[..line.len() - trimmed.len()];
            match shorter(d.trim().trim_matches(|c: char| c == '"' || c == '\''), 1) {
                Some(s) => out.push_str(&format!("{indent}for: {s}")),
                None => out.push_str(line),
            }
        } else {
            let mut rest = line;
            while let Some(open) = rest.find('[') {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
                let Some(close) = rest.find(']') else { break };
                let inner = &rest[..close];
                let parts: Vec<Option<String>> = inner.split(':').map(|p| shorter(p, 5)).collect();
                if !inner.is_empty() && parts.iter().all(Option::is_some) {
                    let parts: Vec<String> = parts.into_iter().flatten().collect();
                    out.push_str(&parts.join(":"));
                } else {
                    out.push_str(inner);
                }
                rest = &rest[close..];
            }
            out.push_str(rest);
        }
        out.push('\n');
    }
    out
}

/// The alert notifications Alertmanager delivered: each the webhook's JSON body.
#[derive(Clone, Default)]
pub struct Webhook {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    /// Listens on a loopback port 0 and records every POSTed body (the thread ends with the
    /// test process).
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hook = Webhook {
            port: listener.local_addr().unwrap().port(),
            received: Arc::default(),
        };
        let received = hook.received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Some(body) = read_request(conn) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        received.lock().unwrap().push(v);
                    }
                }
            }
        });
        hook
    }

    /// Every alert delivered so far with its status (`firing` or `resolved`).
    pub fn alerts(&self) -> Vec<Value> {
        let all = self.received.lock().unwrap();
        all.iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// Reads one HTTP/1.x request, answers 200, and returns its body.
fn read_request(mut conn: TcpStream) -> Option<Vec<u8>> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some(body)
}

/// Waits until Prometheus on `port` has `n` scrape targets, all up (at most a minute).
pub fn wait_targets_up(port: u16, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = targets(port);
        if up.len() == n && up.iter().all(|(_, h)| h == "up") {
            return;
        }
        assert!(Instant::now() < deadline, "scrape targets not up: {up:?}");
        pause(200);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` over HTTP/1.0 (so the answer is not chunked); `None` when it cannot connect.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Evaluates `expr` now through Prometheus' API: `Ok(result)` (the vector, maybe empty) or
/// `Err(the error Prometheus gave)`.
pub fn query(prometheus: u16, expr: &str) -> Result<Vec<Value>, String> {
    let body = get(prometheus, &format!("/api/v1/query?query={}", encode(expr)))
        .ok_or_else(|| "Prometheus did not answer".to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The state of Prometheus' scrape targets: `(job, health)` pairs.
pub fn targets(prometheus: u16) -> Vec<(String, String)> {
    let Some(body) = get(prometheus, "/api/v1/targets") else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                t["health"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_shortened_sixty_times() {
        let text =
            "    expr: rate(x[5m]) > 1 and rate(x[1h]) > 2 and max_over_time(y[30m:1m])\n    \
                    for: 2m\n    labels: {severity: page}\n";
        let got = shorten_rules(text);
        assert!(got.contains("rate(x[5s])"), "{got}");
        assert!(got.contains("rate(x[60s])"), "{got}");
        assert!(got.contains("y[30s:5s]"), "{got}");
        assert!(got.contains("for: 2s"), "{got}");
        assert!(got.contains("{severity: page}"), "{got}");
    }
}
