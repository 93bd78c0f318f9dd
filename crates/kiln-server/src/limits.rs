//! Connection limits and timeouts: what keeps one client, slow or hostile, from holding the
//! server's connections, descriptors or memory.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Timeouts, connection caps and the in-flight budget. `Default` gives the values the
/// `kiln serve` flags default to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a request's head (line and headers) over HTTP/1.1. hyper starts it when
    /// the connection is ready for its next request, so it also closes a keep-alive connection
    /// idle for this long.
    pub header_read_timeout: Duration,
    /// Grace period of a request body: after it, the body must have arrived at
    /// [`Limits::body_min_rate`] on average, or the request fails with 408 and the connection
    /// closes. `0` with a rate of `0` turns the check off.
    pub body_read_timeout: Duration,
    /// Least average rate of a request body after [`Limits::body_read_timeout`], bytes/s.
    pub body_min_rate: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2 and gRPC; an
    /// HTTP/1.1 connection is also bound by [`Limits::header_read_timeout`]).
    pub idle_timeout: Duration,
    /// Most open connections on each listener (HTTP, gRPC, metrics); one more is refused at
    /// once (HTTP: `503` and close; gRPC: closed).
    pub max_connections: usize,
    /// Most inference requests in flight server-wide (HTTP and gRPC); `0` = no limit.
    pub max_inflight_requests: usize,
    /// Most request bytes in flight server-wide (declared `Content-Length` over HTTP, the
    /// tensors' bytes over gRPC); `0` = no limit.
    pub max_inflight_bytes: usize,
    /// Interval of HTTP/2 keep-alive pings on gRPC connections; `None` sends none.
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long a keep-alive ping may go unanswered before the connection is closed.
    pub grpc_keepalive_timeout: Duration,
    /// TCP keep-alive probes on accepted sockets after this much silence; `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// HTTP/2 flow-control window of each gRPC stream, bytes: how much of a request a client
    /// may send before the server acknowledges it. A request larger than the window waits
    /// for a `WINDOW_UPDATE` round trip per window's worth.
    pub grpc_stream_window: u32,
    /// HTTP/2 flow-control window of each gRPC connection, bytes: what one connection may
    /// have in flight across its streams, so the most request bytes buffered per connection.
    pub grpc_connection_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_inflight_requests: 0,
            max_inflight_bytes: 1 << 30,
            grpc_keepalive_interval: None,
            grpc_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Some(Duration::from_secs(60)),
            grpc_stream_window: 1 << 20,
            grpc_connection_window: 2 << 20,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub listener: &'static str,
}

/// Connection metrics, per listener.
#[derive(Clone, Default)]
pub(crate) struct ConnMetrics {
    /// Connections open now.
    pub open: Family<ListenerLabels, Gauge>,
    /// Connections refused because the listener was at its cap.
    pub refused: Family<ListenerLabels, Counter>,
    /// Connections closed by a header, body or idle timeout.
    pub timed_out: Family<ListenerLabels, Counter>,
}

impl ConnMetrics {
    /// Registers `kiln_server_connections_open`, `kiln_server_connections_refused_total` and
    /// `kiln_server_connections_timed_out_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kiln_server_connections_open",
            "Open client connections, per listener",
            self.open.clone(),
        );
        registry.register(
            "kiln_server_connections_refused",
            "Connections refused because the listener had --max-connections open",
            self.refused.clone(),
        );
        registry.register(
            "kiln_server_connections_timed_out",
            "Connections closed by the header, body or idle timeout",
            self.timed_out.clone(),
        );
    }
}

/// Logs a condition once per burst: the first occurrence, then at most once per `every`,
/// with the count since the last line.
pub(crate) struct BurstLog {
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
    every: Duration,
}

impl BurstLog {
    pub fn new(every: Duration) -> Self {
        BurstLog {
            last: Mutex::new(None),
            count: AtomicU64::new(0),
            every,
        }
    }

    /// Counts one occurrence; returns how many to report when a line is due.
    pub fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().ok()?;
        let due = last.is_none_or(|t| t.elapsed() >= self.every);
        if !due {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_log_reports_once_per_period_with_the_count() {
        let b = BurstLog::new(Duration::from_secs(3600));
        assert_eq!(b.hit(), Some(1));
        assert_eq!(b.hit(), None);
        assert_eq!(b.hit(), None);
        *b.last.lock().unwrap() = None;
        assert_eq!(b.hit(), Some(3));
    }
}
