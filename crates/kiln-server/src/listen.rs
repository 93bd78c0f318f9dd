//! Accept loops with a connection cap per listener, TCP options, timeouts and graceful
//! shutdown: hyper-util's HTTP/1.1 + HTTP/2 server for the HTTP and metrics listeners, and a
//! capped, idle-timed stream of connections for tonic.

use crate::body::MinRateBody;
use crate::error::ApiError;
use crate::limits::{BurstLog, ConnMetrics, Limits, ListenerLabels};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use kiln_core::{Error, ErrorCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// What a refused HTTP connection is told before it is closed.
const REFUSED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 64\r\n\r\n{\"error\":\"too many connections: server at its connection limit\"}";

/// Requests in flight on one connection and when the last one ended, for the idle timeout.
pub(crate) struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` of the last request start or end.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Records activity now (a request starting or ending, bytes arriving).
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActiveGuard(self.clone())
    }

    /// How long the connection has had no request in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.base.elapsed().saturating_sub(last))
    }
}

/// Ends a request's activity on drop.
pub(crate) struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One listener's cap, metrics and refusal log.
pub(crate) struct Gate {
    pub name: &'static str,
    sem: Arc<Semaphore>,
    max: usize,
    metrics: ConnMetrics,
    log: BurstLog,
}

impl Gate {
    pub fn new(name: &'static str, max: usize, metrics: ConnMetrics) -> Self {
        let max = max.clamp(1, u32::MAX as usize);
        Gate {
            name,
            sem: Arc::new(Semaphore::new(max)),
            max,
            metrics,
            log: BurstLog::new(Duration::from_secs(10)),
        }
    }

    fn labels(&self) -> ListenerLabels {
        ListenerLabels {
            listener: self.name,
        }
    }

    /// A slot for a new connection, or `None` (counted and logged) at the cap.
    pub fn admit(&self) -> Option<Slot> {
        match self.sem.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = self.metrics.open.get_or_create(&self.labels()).clone();
                open.inc();
                Some(Slot {
                    _permit: permit,
                    open,
                })
            }
            Err(_) => {
                self.metrics.refused.get_or_create(&self.labels()).inc();
                if let Some(n) = self.log.hit() {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max,
                        refused = n,
                        "connection limit reached: refusing new connections"
                    );
                }
                None
            }
        }
    }

    /// Counts a connection closed by a timeout.
    pub fn timed_out(&self) {
        self.metrics.timed_out.get_or_create(&self.labels()).inc();
    }

    /// Waits until every connection has closed.
    pub async fn drained(&self) {
        let _ = self.sem.acquire_many(self.max as u32).await;
    }
}

/// A connection's place under the cap; frees it on drop.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Sets TCP_NODELAY and keep-alive on an accepted socket.
pub(crate) fn tune(tcp: &TcpStream, keepalive: Option<Duration>) {
    let _ = tcp.set_nodelay(true);
    if let Some(k) = keepalive {
        let ka = socket2::TcpKeepalive::new().with_time(k);
        let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka);
    }
}

/// Accepts the next connection; transient errors (a peer gone, descriptors exhausted) are
/// logged and retried after a short pause instead of ending the listener.
pub(crate) async fn accept(listener: &TcpListener, name: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `app` on `listener` over HTTP/1.1 and HTTP/2 until `stop` turns true, then stops
/// accepting (the port closes), lets in-flight requests finish and returns once every
/// connection has closed. `max_body` is refused with 413 from `Content-Length` alone.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: Router,
    gate: Gate,
    limits: Limits,
    max_body: usize,
    mut stop: watch::Receiver<bool>,
) {
    let gate = Arc::new(gate);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let limits = Arc::new(limits);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            c = accept(&listener, gate.name) => c,
        };
        let Some(slot) = gate.admit() else {
            let _ = tcp.try_write(REFUSED_503);
            drop(tcp);
            continue;
        };
        tune(&tcp, limits.tcp_keepalive);
        let conn = Connection {
            builder: builder.clone(),
            app: app.clone(),
            gate: gate.clone(),
            limits: limits.clone(),
            max_body,
            remote,
            stop: stop.clone(),
        };
        tokio::spawn(conn.run(tcp, slot));
    }
    drop(listener);
    gate.drained().await;
}

struct Connection {
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    gate: Arc<Gate>,
    limits: Arc<Limits>,
    max_body: usize,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream, slot: Slot) {
        let activity = Activity::new();
        let svc = {
            let (app, act, limits, remote, max_body) = (
                self.app.clone(),
                activity.clone(),
                self.limits.clone(),
                self.remote,
                self.max_body,
            );
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let guard = act.begin();
                let app = app.clone();
                let limits = limits.clone();
                async move {
                    let resp = handle(app, req, &limits, remote, max_body).await;
                    drop(guard);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let conn = self.builder.serve_connection(TokioIo::new(tcp), svc);
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout;
        let mut closing = false;
        let idle_check = tokio::time::sleep(idle);
        tokio::pin!(idle_check);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        if is_timeout(e.as_ref()) {
                            self.gate.timed_out();
                        }
                        tracing::debug!(remote = %self.remote, error = %e, "connection ended");
                    }
                    break;
                }
                _ = self.stop.wait_for(|s| *s), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = idle_check.as_mut(), if !closing => {
                    match activity.idle_for() {
                        Some(d) if d >= idle => {
                            closing = true;
                            self.gate.timed_out();
                            conn.as_mut().graceful_shutdown();
                        }
                        Some(d) => idle_check.as_mut().reset((Instant::now() + (idle - d)).into()),
                        None => idle_check.as_mut().reset((Instant::now() + idle).into()),
                    }
                }
            }
        }
        drop(slot);
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// One request: the caller's address in its extensions, a declared body over the limit
/// refused before it is read, the body rate-checked, then the router.
async fn handle(
    app: Router,
    req: Request<hyper::body::Incoming>,
    limits: &Limits,
    remote: SocketAddr,
    max_body: usize,
) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > max_body as u64) {
        let mut r = ApiError(Error::new(
            ErrorCode::PayloadTooLarge,
            format!("request body too large: content-length {n} is over the limit of {max_body} bytes (--max-request-bytes)"),
        ))
        .into_response();
        // the body is never read, so the connection cannot carry another request
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let (grace, rate) = (limits.body_read_timeout, limits.body_min_rate);
    let mut req = req.map(|b| Body::new(MinRateBody::new(Body::new(b), grace, rate)));
    req.extensions_mut().insert(ConnectInfo(remote));
    let mut r = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if r.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
        // the rest of a too-slow body is not waited for
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSED_503).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(len, body.len());
        assert!(
            serde_json::from_str::<serde_json::Value>(body).is_ok(),
            "{body}"
        );
    }
}
