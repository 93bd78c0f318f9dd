//! The gRPC listener's connections for tonic: capped per listener (one more is closed at
//! once), tuned (TCP_NODELAY, keep-alive), and closed when idle, i.e. when nothing arrives from
//! the client and no request is in flight for the idle timeout.

use crate::listen::{accept, tune, Activity, Gate, Slot};
use axum::http::Request;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What tonic learns of a connection: the TCP addresses (re-inserted as [`TcpConnectInfo`] so
/// `Request::remote_addr` works) and the connection's activity, which [`track`] updates.
#[derive(Clone)]
pub(crate) struct GrpcConnInfo {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

/// An accepted gRPC connection holding its slot under the cap.
pub(crate) struct GrpcIo {
    tcp: TcpStream,
    info: GrpcConnInfo,
    idle: Duration,
    check: Pin<Box<Sleep>>,
    gate: Arc<Gate>,
    _slot: Slot,
}

impl Connected for GrpcIo {
    type ConnectInfo = GrpcConnInfo;

    fn connect_info(&self) -> GrpcConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Pending => {}
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.info.activity.touch();
                }
                return Poll::Ready(r);
            }
        }
        loop {
            if this.check.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match this.info.activity.idle_for() {
                Some(d) if d >= this.idle => {
                    // end of stream: the connection closes as if the client had left
                    this.gate.timed_out();
                    tracing::debug!(remote = ?this.info.tcp.remote_addr, "idle gRPC connection closed");
                    return Poll::Ready(Ok(()));
                }
                Some(d) => this.check.as_mut().reset(Instant::now() + (this.idle - d)),
                None => this.check.as_mut().reset(Instant::now() + this.idle),
            }
        }
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Accepts gRPC connections until `stop` turns true; the returned stream is tonic's incoming.
/// Dropping the listener on stop closes the port at once.
pub(crate) fn incoming(
    listener: TcpListener,
    gate: Gate,
    idle: Duration,
    tcp_keepalive: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<GrpcIo>> {
    let (tx, rx) = mpsc::channel(1);
    let gate = Arc::new(gate);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                c = accept(&listener, gate.name) => c,
            };
            let Some(slot) = gate.admit() else {
                drop(tcp);
                continue;
            };
            tune(&tcp, tcp_keepalive);
            let activity = Activity::new();
            let io = GrpcIo {
                info: GrpcConnInfo {
                    tcp: TcpConnectInfo {
                        local_addr: tcp.local_addr().ok(),
                        remote_addr: Some(remote),
                    },
                    activity,
                },
                tcp,
                idle,
                check: Box::pin(tokio::time::sleep(idle)),
                gate: gate.clone(),
                _slot: slot,
            };
            if tx.send(Ok(io)).await.is_err() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A tower layer for tonic: marks each request in flight on its connection (so the idle
/// timeout spares it) and re-inserts the TCP addresses where `Request::remote_addr` looks.
#[derive(Clone, Copy, Default)]
pub(crate) struct TrackLayer;

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track(inner)
    }
}

/// See [`TrackLayer`].
#[derive(Clone)]
pub(crate) struct Track<S>(S);

impl<S, B> tower::Service<Request<B>> for Track<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let guard = req.extensions().get::<GrpcConnInfo>().cloned().map(|info| {
            req.extensions_mut().insert(info.tcp.clone());
            info.activity.begin()
        });
        let fut = self.0.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}
