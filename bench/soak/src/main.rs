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
//! Every command prints one line of `key=value` figures. `closed` and `open` send to the model
//! named by `KILN_SOAK_MODEL` (default `mlp`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The infer path of the model `closed` and `open` load: `KILN_SOAK_MODEL`, default `mlp`.
fn infer_path() -> String {
    let model = std::env::var("KILN_SOAK_MODEL").unwrap_or_else(|_| "mlp".into());
    format!("/v2/models/{model}/infer")
}

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
    let req = Arc::new(post(&infer_path(), &mlp_body()));
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

/// When each of `n` requests is due, from `start`: evenly spaced at `rate`/s, or with
/// exponential gaps (Poisson arrivals) when `KILN_SOAK_ARRIVALS=poisson`.
fn schedule(n: u64, rate: f64, start: Instant) -> Vec<Instant> {
    let poisson = std::env::var("KILN_SOAK_ARRIVALS").is_ok_and(|v| v == "poisson");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut t = 0.0f64;
    (0..n)
        .map(|i| {
            if poisson {
                // xorshift64*: a uniform in (0, 1], then an exponential gap
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let u = ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0)
                    / (1u64 << 53) as f64;
                t += -u.ln() / rate;
            } else {
                t = i as f64 / rate;
            }
            start + Duration::from_secs_f64(t)
        })
        .collect()
}

/// Releases each request at its due time from a thread of its own: tokio's timer has a
/// resolution of one millisecond, so sleeping until each due time on the runtime would send
/// the requests in bursts at millisecond boundaries (4-5 at once at 4,500/s) instead of at
/// the offered rate. The thread sleeps with a 1 us timer slack and hands request `i` to
/// connection `i % conns`. `KILN_SOAK_TIMER=tokio` paces on tokio's timer instead, as this
/// generator did before, to show the difference.
fn pacer(due: Arc<Vec<Instant>>, conns: usize) -> Vec<tokio::sync::mpsc::UnboundedReceiver<u64>> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..conns)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    if std::env::var("KILN_SOAK_TIMER").is_ok_and(|v| v == "tokio") {
        // the former pacing, for comparison: tokio's millisecond timer
        tokio::spawn(async move {
            for (i, &at) in due.iter().enumerate() {
                tokio::time::sleep_until(at.into()).await;
                let _ = txs[i % txs.len()].send(i as u64);
            }
        });
        return rxs;
    }
    std::thread::spawn(move || {
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0u64, 0u64, 0u64) };
        for (i, &at) in due.iter().enumerate() {
            loop {
                let now = Instant::now();
                if now >= at {
                    break;
                }
                std::thread::park_timeout(at - now);
            }
            let _ = txs[i % txs.len()].send(i as u64);
        }
    });
    rxs
}

/// CPU time (user + system) this process has used so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF and a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Open loop: `rate` requests/s spread over `conns` connections, each request's latency taken
/// from the time it was due when its connection was still busy then, else from the time it
/// was released. Prints the generator's own CPU use and how often the server closed a
/// connection (each costs a reconnect).
async fn open(addr: String, secs: f64, rate: f64, conns: usize, path: &str) -> String {
    let req = Arc::new(post(path, &mlp_body()));
    let start = Instant::now() + Duration::from_millis(50);
    let began = Instant::now();
    let cpu0 = cpu_seconds();
    let n_total = (rate * secs) as u64;
    let due = Arc::new(schedule(n_total, rate, start));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let late = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut ticks in pacer(due.clone(), conns) {
        let (addr, req, tally, late) = (addr.clone(), req.clone(), tally.clone(), late.clone());
        let (due, reconnects) = (due.clone(), reconnects.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await.ok();
            let mut local = Tally::default();
            loop {
                // A request already released while the connection was busy is late by the
                // server's doing: its latency counts from when it was due.
                let (i, from) = match ticks.try_recv() {
                    Ok(i) => (i, due[i as usize]),
                    Err(_) => match ticks.recv().await {
                        Some(i) => (i, Instant::now()),
                        None => break,
                    },
                };
                if Instant::now() - due[i as usize] > Duration::from_millis(1) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                if c.is_none() {
                    reconnects.fetch_add(1, Ordering::Relaxed);
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
    let cpu = cpu_seconds() - cpu0;
    format!(
        "offered_per_s={rate:.0} wall_s={wall:.2} sent_late_over_1ms={} reconnects={} gen_cpu_s={cpu:.2} gen_cpu_share={:.0}% {}",
        late.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed),
        100.0 * cpu / wall,
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
            Some("open") => open(addr, f(3), f(4), f(5) as usize, &infer_path()).await,
            Some("slow") => slow(addr, f(3), f(4), f(5) as usize, f(6) as usize).await,
            Some("cycles") => cycles(addr, f(3) as usize, f(4)).await,
            _ => panic!("usage: see the module doc of bench/soak/src/main.rs"),
        }
    });
    println!("{out}");
}
