//! `kiln-soak`: the load generator of the soak harness (`bench/soak/run.sh`). Loopback only,
//! bounded in time. A minimal HTTP/1.1 keep-alive client over tokio, so one core can offer far
//! more than the server's capacity.
//!
//! ```text
//! kiln-soak closed   ADDR SECS CONNS        closed loop: capacity and latency at CONNS
//! kiln-soak open     ADDR SECS RATE CONNS   open loop at RATE req/s (latency from the scheduled time)
//! kiln-soak slow     ADDR SECS RATE IDLE TRICKLE   IDLE silent and TRICKLE trickling sockets
//!                                          while a client measures latency at RATE
//! kiln-soak cycles   ADDR N RATE            N unload/load cycles of mlp under RATE req/s
//! ```
//! Every command prints one line of `key=value` figures.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An mlp request with `KILN_SOAK_ROWS` rows (default 1), as JSON.
fn mlp_body() -> String {
    let rows: usize = std::env::var("KILN_SOAK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let data: Vec<String> = (0..256 * rows)
        .map(|i| format!("{:.4}", ((i * 37) % 101) as f32 / 50.0 - 1.0))
        .collect();
    format!(
        "{{\"inputs\":[{{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[{rows},256],\"data\":[{}]}}]}}",
        data.join(",")
    )
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One keep-alive connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Sends `req` and reads one response; the status and whether the server closes.
    async fn call(&mut self, req: &[u8]) -> io::Result<(u16, bool)> {
        self.s.write_all(req).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| io::Error::other("no status"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let close = head.contains("connection: close");
                let total = end + 4 + len;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                self.buf.drain(..total);
                return Ok((status, close));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 16384];
        let n = self.s.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

/// Latencies (µs) by outcome.
#[derive(Default)]
struct Tally {
    ok: Vec<u32>,
    rejected: Vec<u32>,
    other: Vec<u32>,
    errors: u64,
}

impl Tally {
    fn add(&mut self, status: Option<u16>, us: u32) {
        match status {
            Some(200) => self.ok.push(us),
            Some(429) => self.rejected.push(us),
            Some(_) => self.other.push(us),
            None => self.errors += 1,
        }
    }
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

fn summary(t: &mut Tally, secs: f64) -> String {
    format!(
        "ok={} ok_per_s={:.0} ok_p50_ms={:.3} ok_p99_ms={:.3} rejected={} rej_p50_ms={:.3} rej_p99_ms={:.3} other={} errors={}",
        t.ok.len(),
        t.ok.len() as f64 / secs,
        pct(&mut t.ok, 0.50),
        pct(&mut t.ok, 0.99),
        t.rejected.len(),
        pct(&mut t.rejected, 0.50),
        pct(&mut t.rejected, 0.99),
        t.other.len(),
        t.errors
    )
}

/// Closed loop on `conns` connections for `secs`.
async fn closed(addr: String, secs: f64, conns: usize) -> String {
    let req = Arc::new(post("/v2/models/mlp/infer", &mlp_body()));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, req, tally) = (addr.clone(), req.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await.ok();
            let mut local = Tally::default();
            while Instant::now() < end {
                let t = Instant::now();
                let status = match c.as_mut() {
                    Some(conn) => conn.call(&req).await.ok(),
                    None => None,
                };
                local.add(status.map(|s| s.0), t.elapsed().as_micros() as u32);
                if status.is_none_or(|s| s.1) {
                    c = Conn::open(&addr).await.ok();
                }
            }
            let mut all = tally.lock().unwrap();
            all.ok.extend(local.ok);
            all.rejected.extend(local.rejected);
            all.other.extend(local.other);
            all.errors += local.errors;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut t = tally.lock().unwrap();
    summary(&mut t, secs)
}

/// Open loop: `rate` requests/s spread over `conns` connections, each request's latency taken
/// from the time it was due, so a late send counts against the server.
async fn open(addr: String, secs: f64, rate: f64, conns: usize, path: &str) -> String {
    let req = Arc::new(post(path, &mlp_body()));
    let start = Instant::now() + Duration::from_millis(50);
    let began = Instant::now();
    let n_total = (rate * secs) as u64;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let late = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..conns as u64 {
        let (addr, req, tally, late) = (addr.clone(), req.clone(), tally.clone(), late.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await.ok();
            let mut local = Tally::default();
            let mut i = k;
            while i < n_total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                // Latency counts from when the request was due when the connection was still
                // busy then (the server's delay), else from when the timer woke (tokio's
                // millisecond timer is the generator's delay, not the server's).
                let from = if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    if now - due > Duration::from_millis(1) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    due
                };
                if c.is_none() {
                    c = Conn::open(&addr).await.ok();
                }
                let status = match c.as_mut() {
                    Some(conn) => conn.call(&req).await.ok(),
                    None => None,
                };
                local.add(status.map(|s| s.0), from.elapsed().as_micros() as u32);
                if status.is_none_or(|s| s.1) {
                    c = None;
                }
                i += conns as u64;
            }
            let mut all = tally.lock().unwrap();
            all.ok.extend(local.ok);
            all.rejected.extend(local.rejected);
            all.other.extend(local.other);
            all.errors += local.errors;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut t = tally.lock().unwrap();
    let wall = began.elapsed().as_secs_f64() - 0.05;
    format!(
        "offered_per_s={rate:.0} wall_s={wall:.2} sent_late_over_1ms={} {}",
        late.load(Ordering::Relaxed),
        summary(&mut t, wall)
    )
}

/// `idle` silent sockets and `trickle` sockets sending a header byte every 200 ms, each
/// reopened when the server closes it, while `open` measures a normal client.
async fn slow(addr: String, secs: f64, rate: f64, idle: usize, trickle: usize) -> String {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let closed = Arc::new(AtomicU64::new(0));
    let refused_connect = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..idle + trickle {
        let (addr, closed, refused) = (addr.clone(), closed.clone(), refused_connect.clone());
        let trickles = i >= idle;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Ok(mut s) = TcpStream::connect(&addr).await else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: kiln\r\nX-Slow: ";
                let mut j = 0usize;
                let mut buf = [0u8; 1024];
                loop {
                    if Instant::now() >= end {
                        return;
                    }
                    if trickles {
                        let b = head.get(j).copied().unwrap_or(b'a');
                        j += 1;
                        if s.write_all(&[b]).await.is_err() {
                            break;
                        }
                    }
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Err(_) => continue,
                        Ok(Ok(n)) if n > 0 => continue,
                        Ok(_) => break,
                    }
                }
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // let the slow sockets settle before measuring
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measured = open(addr, secs - 1.0, rate, 4, "/v2/models/mlp/infer").await;
    for t in tasks {
        let _ = t.await;
    }
    format!(
        "idle={idle} trickle={trickle} closed_by_server={} connect_failures={} {measured}",
        closed.load(Ordering::Relaxed),
        refused_connect.load(Ordering::Relaxed)
    )
}

/// `n` unload/load cycles of mlp through the repository API under `rate` req/s of traffic.
async fn cycles(addr: String, n: usize, rate: f64) -> String {
    let traffic = {
        let addr = addr.clone();
        let secs = (n as f64 * 0.1).max(2.0);
        tokio::spawn(async move { open(addr, secs, rate, 8, "/v2/models/mlp/infer").await })
    };
    let mut c = Conn::open(&addr).await.expect("connect");
    let (unload, load) = (
        post("/v2/repository/models/mlp/unload", "{}"),
        post("/v2/repository/models/mlp/load", "{}"),
    );
    let mut failed = 0;
    let t = Instant::now();
    for _ in 0..n {
        for r in [&unload, &load] {
            match c.call(r).await {
                Ok((200, _)) => {}
                _ => {
                    failed += 1;
                    c = Conn::open(&addr).await.expect("reconnect");
                }
            }
        }
    }
    let took = t.elapsed().as_secs_f64();
    let traffic = traffic.await.unwrap_or_default();
    format!(
        "cycles={n} cycle_failures={failed} cycles_per_s={:.1} traffic: {traffic}",
        n as f64 / took
    )
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let f = |i: usize| -> f64 {
        a.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("argument {i} must be a number; see the module doc"))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = a.get(2).cloned().expect("ADDR");
    let out = rt.block_on(async {
        match a.get(1).map(String::as_str) {
            Some("closed") => closed(addr, f(3), f(4) as usize).await,
            Some("open") => open(addr, f(3), f(4), f(5) as usize, "/v2/models/mlp/infer").await,
            Some("slow") => slow(addr, f(3), f(4), f(5) as usize, f(6) as usize).await,
            Some("cycles") => cycles(addr, f(3) as usize, f(4)).await,
            _ => panic!("usage: see the module doc of bench/soak/src/main.rs"),
        }
    });
    println!("{out}");
}
